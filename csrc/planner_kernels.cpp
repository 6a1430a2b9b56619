// C++ hot paths of the sequence-parallel planner. Each function mirrors its pure-Python twin in
// parallel/planner/kernels_py.py line by line (same tie-breaking, same floating-point order), so
// tests compare them for exact equality. See the twin for what each one computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

namespace py = pybind11;
using i64 = std::int64_t;

static std::tuple<std::vector<i64>, i64> bucket_lengths(const std::vector<i64>& values,
                                                        const std::vector<i64>& counts, i64 max_buckets) {
  const i64 u = static_cast<i64>(values.size());
  if (u == 0) return {std::vector<i64>{}, 0};
  const i64 k_max = std::max<i64>(1, std::min(max_buckets, u));
  std::vector<i64> cnt(u + 1, 0), tok(u + 1, 0);
  for (i64 j = 0; j < u; ++j) {
    cnt[j + 1] = cnt[j] + counts[j];
    tok[j + 1] = tok[j] + values[j] * counts[j];
  }
  const i64 inf = std::numeric_limits<i64>::max();
  std::vector<std::vector<i64>> best(k_max + 1, std::vector<i64>(u + 1, inf));
  std::vector<std::vector<i64>> cut(k_max + 1, std::vector<i64>(u + 1, 0));
  best[0][0] = 0;
  for (i64 k = 1; k <= k_max; ++k) {
    for (i64 j = k; j <= u; ++j) {
      const i64 top = values[j - 1];
      for (i64 i = k - 1; i < j; ++i) {
        if (best[k - 1][i] == inf) continue;
        const i64 cost = best[k - 1][i] + top * (cnt[j] - cnt[i]) - (tok[j] - tok[i]);
        if (cost < best[k][j]) {
          best[k][j] = cost;
          cut[k][j] = i;
        }
      }
    }
  }
  std::vector<i64> ends;
  i64 j = u;
  for (i64 k = k_max; k > 0; --k) {
    ends.push_back(j);
    j = cut[k][j];
  }
  std::reverse(ends.begin(), ends.end());
  return {ends, best[k_max][u]};
}

static std::tuple<std::vector<i64>, i64> partition_microbatches(const std::vector<i64>& tokens, i64 num_chunks) {
  const i64 n = static_cast<i64>(tokens.size());
  const i64 m = std::min(std::max<i64>(1, num_chunks), n);
  if (n == 0) return {std::vector<i64>{}, 0};
  std::vector<i64> pre(n + 1, 0);
  for (i64 j = 0; j < n; ++j) pre[j + 1] = pre[j] + tokens[j];
  const i64 big = pre[n] + 1;
  std::vector<std::vector<i64>> best(m + 1, std::vector<i64>(n + 1, big));
  std::vector<std::vector<i64>> cut(m + 1, std::vector<i64>(n + 1, 0));
  best[0][0] = 0;
  for (i64 k = 1; k <= m; ++k) {
    const std::vector<i64>& prev = best[k - 1];
    for (i64 j = k; j <= n - (m - k); ++j) {
      i64 low = k - 1, high = j;
      while (low < high) {
        const i64 mid = (low + high) / 2;
        if (prev[mid] >= pre[j] - pre[mid]) {
          high = mid;
        } else {
          low = mid + 1;
        }
      }
      i64 choice = -1, value = big;
      for (i64 i : {low - 1, low}) {
        if (k - 1 <= i && i < j) {
          const i64 cost = std::max(prev[i], pre[j] - pre[i]);
          if (cost < value) {
            choice = i;
            value = cost;
          }
        }
      }
      best[k][j] = value;
      cut[k][j] = choice;
    }
  }
  std::vector<i64> ends;
  i64 j = n;
  for (i64 k = m; k > 0; --k) {
    ends.push_back(j);
    j = cut[k][j];
  }
  std::reverse(ends.begin(), ends.end());
  return {ends, best[m][n]};
}

struct Problem {
  i64 n, num_sizes;
  const double* times;  // n x num_sizes, row-major
  std::vector<i64> tokens, lo, hi, sizes, order;
  i64 num_ranks, capacity, min_open;
  bool densest;
  double t(i64 i, i64 s) const { return times[i * num_sizes + s]; }
};

struct Packing {
  std::vector<i64> g_size;
  std::vector<double> g_load;
  std::vector<i64> assign;
  i64 used = 0;
};

static std::optional<Packing> first_fit(const Problem& p, double limit) {
  Packing out;
  std::vector<i64> g_tok;
  out.assign.assign(p.n, 0);
  for (i64 i : p.order) {
    const i64 lo_i = p.lo[i], hi_i = p.hi[i], tok_i = p.tokens[i];
    i64 best = -1, best_size = 0;
    double best_load = 0.0;
    const i64 groups = static_cast<i64>(out.g_size.size());
    for (i64 g = 0; g < groups; ++g) {
      const i64 s = out.g_size[g];
      if (s < lo_i || s > hi_i) continue;
      const double load = out.g_load[g] + p.t(i, s);
      if (load > limit || g_tok[g] + tok_i > p.sizes[s] * p.capacity) continue;
      if (best < 0 || p.sizes[s] < best_size || (p.sizes[s] == best_size && load > best_load)) {
        best = g;
        best_size = p.sizes[s];
        best_load = load;
      }
    }
    if (best >= 0) {
      out.g_load[best] = best_load;
      g_tok[best] += tok_i;
      out.assign[i] = best;
      continue;
    }
    i64 opened = -1;
    double best_ratio = std::numeric_limits<double>::infinity();
    for (i64 s = std::min(std::max(lo_i, p.min_open), hi_i); s <= hi_i; ++s) {
      if (p.t(i, s) <= limit) {
        if (!p.densest) {
          opened = s;
          break;
        }
        const double ratio = static_cast<double>(p.sizes[s]) / std::floor(limit / p.t(i, s));
        if (ratio < best_ratio) {
          opened = s;
          best_ratio = ratio;
        }
      }
    }
    if (opened < 0 || out.used + p.sizes[opened] > p.num_ranks) return std::nullopt;
    out.used += p.sizes[opened];
    out.assign[i] = groups;
    out.g_size.push_back(opened);
    out.g_load.push_back(p.t(i, opened));
    g_tok.push_back(tok_i);
  }
  return out;
}

static std::optional<std::pair<std::vector<double>, std::vector<i64>>> rebalance(const Problem& p,
                                                                                 const std::vector<i64>& g_size) {
  const i64 groups = static_cast<i64>(g_size.size());
  std::vector<double> g_load(groups, 0.0);
  std::vector<i64> g_tok(groups, 0), assign(p.n, 0);
  for (i64 i : p.order) {
    i64 best = -1;
    double best_load = 0.0;
    for (i64 g = 0; g < groups; ++g) {
      const i64 s = g_size[g];
      if (s < p.lo[i] || s > p.hi[i] || g_tok[g] + p.tokens[i] > p.sizes[s] * p.capacity) continue;
      const double load = g_load[g] + p.t(i, s);
      if (best < 0 || load < best_load) {
        best = g;
        best_load = load;
      }
    }
    if (best < 0) return std::nullopt;
    g_load[best] = best_load;
    g_tok[best] += p.tokens[i];
    assign[i] = best;
  }
  return std::make_pair(g_load, assign);
}

static std::tuple<std::vector<i64>, std::vector<i64>, double> pack_microbatch(
    py::array_t<double, py::array::c_style | py::array::forcecast> times, std::vector<i64> tokens,
    std::vector<i64> lo, std::vector<i64> hi, std::vector<i64> sizes, i64 num_ranks, i64 capacity,
    i64 iterations, i64 min_open, bool densest) {
  Problem p;
  p.min_open = min_open;
  p.densest = densest;
  p.n = static_cast<i64>(tokens.size());
  if (p.n == 0) return {std::vector<i64>{}, std::vector<i64>{}, 0.0};
  if (times.ndim() != 2 || times.shape(0) != p.n || times.shape(1) != static_cast<py::ssize_t>(sizes.size()))
    throw std::invalid_argument("times must be a (sequences x sizes) array");
  p.num_sizes = static_cast<i64>(sizes.size());
  p.times = times.data();
  p.tokens = std::move(tokens);
  p.lo = std::move(lo);
  p.hi = std::move(hi);
  p.sizes = std::move(sizes);
  p.num_ranks = num_ranks;
  p.capacity = capacity;
  p.order.resize(p.n);
  std::iota(p.order.begin(), p.order.end(), 0);
  std::stable_sort(p.order.begin(), p.order.end(), [&](i64 a, i64 b) { return p.tokens[a] > p.tokens[b]; });

  py::gil_scoped_release release;
  const double inf = std::numeric_limits<double>::infinity();
  double area = 0.0, longest = 0.0, total = 0.0;
  for (i64 i = 0; i < p.n; ++i) {
    double best_area = inf, best_time = inf;
    for (i64 s = p.lo[i]; s <= p.hi[i]; ++s) {
      best_area = std::min(best_area, static_cast<double>(p.sizes[s]) * p.t(i, s));
      best_time = std::min(best_time, p.t(i, s));
    }
    area += best_area;
    longest = std::max(longest, best_time);
    total += p.t(i, p.lo[i]);
  }
  double low = std::max(area / static_cast<double>(p.num_ranks), longest);
  double high;
  std::optional<Packing> found = first_fit(p, low);
  std::optional<Packing> best;
  if (found) {
    best = std::move(found);
    high = low;
  } else {
    high = low;
    while (true) {
      high = high < total ? std::min(high * 2.0, total) : total;
      found = first_fit(p, high);
      if (found) {
        best = std::move(found);
        break;
      }
      if (high >= total) return {std::vector<i64>{}, std::vector<i64>{}, -1.0};
      low = high;
    }
    for (i64 it = 0; it < iterations; ++it) {
      const double mid = (low + high) / 2.0;
      found = first_fit(p, mid);
      if (!found) {
        low = mid;
      } else {
        high = mid;
        best = std::move(found);
      }
    }
  }
  const double best_span = *std::max_element(best->g_load.begin(), best->g_load.end());
  std::vector<i64> g_size = best->g_size;
  i64 spare = p.num_ranks - best->used;
  for (i64 s = p.num_sizes - 1; s >= 0; --s) {
    while (p.sizes[s] <= spare) {
      g_size.push_back(s);
      spare -= p.sizes[s];
    }
  }
  if (g_size.size() > best->g_size.size()) {
    auto lpt = rebalance(p, g_size);
    if (lpt) {
      const double span = *std::max_element(lpt->first.begin(), lpt->first.end());
      if (span < best_span) return {g_size, lpt->second, span};
    }
  }
  return {best->g_size, best->assign, best_span};
}

static std::tuple<std::vector<i64>, std::vector<i64>, double> fill_microbatch(
    py::array_t<double, py::array::c_style | py::array::forcecast> times, std::vector<i64> tokens,
    std::vector<i64> lo, std::vector<i64> hi, std::vector<i64> sizes, i64 num_ranks, i64 capacity, double limit) {
  const i64 n = static_cast<i64>(tokens.size());
  const i64 num_sizes = static_cast<i64>(sizes.size());
  if (n > 0 && (times.ndim() != 2 || times.shape(0) != n || times.shape(1) != num_sizes))
    throw std::invalid_argument("times must be a (sequences x sizes) array");
  const double* t = times.data();
  py::gil_scoped_release release;
  std::vector<i64> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) { return tokens[a] > tokens[b]; });
  std::vector<i64> g_size, g_tok, assign(n, -1);
  std::vector<double> g_load;
  i64 used = 0;
  for (i64 i : order) {
    const double* row = t + i * num_sizes;
    const i64 lo_i = lo[i], hi_i = hi[i], tok_i = tokens[i];
    i64 best = -1, best_size = 0;
    double best_load = 0.0;
    const i64 groups = static_cast<i64>(g_size.size());
    for (i64 g = 0; g < groups; ++g) {
      const i64 s = g_size[g];
      if (s < lo_i || s > hi_i) continue;
      const double load = g_load[g] + row[s];
      if (load > limit || g_tok[g] + tok_i > sizes[s] * capacity) continue;
      if (best < 0 || sizes[s] < best_size || (sizes[s] == best_size && load > best_load)) {
        best = g;
        best_size = sizes[s];
        best_load = load;
      }
    }
    if (best >= 0) {
      g_load[best] = best_load;
      g_tok[best] += tok_i;
      assign[i] = best;
      continue;
    }
    for (i64 s = lo_i; s <= hi_i; ++s) {
      if (row[s] <= limit) {
        if (used + sizes[s] <= num_ranks) {
          used += sizes[s];
          assign[i] = groups;
          g_size.push_back(s);
          g_load.push_back(row[s]);
          g_tok.push_back(tok_i);
        }
        break;
      }
    }
  }
  const double span = g_load.empty() ? 0.0 : *std::max_element(g_load.begin(), g_load.end());
  return {g_size, assign, span};
}

PYBIND11_MODULE(_native, m) {
  m.doc() = "C++ kernels of the hetron sequence-parallel planner (twins in parallel/planner/kernels_py.py)";
  m.def("bucket_lengths", &bucket_lengths, py::arg("values"), py::arg("counts"), py::arg("max_buckets"),
        py::call_guard<py::gil_scoped_release>());
  m.def("partition_microbatches", &partition_microbatches, py::arg("tokens"), py::arg("num_chunks"),
        py::call_guard<py::gil_scoped_release>());
  m.def("pack_microbatch", &pack_microbatch, py::arg("times"), py::arg("tokens"), py::arg("lo"), py::arg("hi"),
        py::arg("sizes"), py::arg("num_ranks"), py::arg("capacity"), py::arg("iterations") = 24, py::arg("min_open") = 0,
        py::arg("densest") = false);
  m.def("fill_microbatch", &fill_microbatch, py::arg("times"), py::arg("tokens"), py::arg("lo"), py::arg("hi"),
        py::arg("sizes"), py::arg("num_ranks"), py::arg("capacity"), py::arg("limit"));
}
