// Region acquisition (CPU): separable window sums for box means, greedy non-overlapping top-b.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <unordered_map>

#include "labelwise/acquisition/regions.hpp"
#include "labelwise/detail/parallel_for.hpp"

namespace labelwise {
namespace {

struct MapInfo {
  int nsp = 0;                  // spatial axes (1..3)
  std::int64_t N = 0;
  std::int64_t S[3] = {1, 1, 1};  // spatial extents, padded with 1 to three axes
  std::int64_t st[4] = {0, 0, 0, 0};  // strides of (n, s0, s1, s2), 0 for padded axes
};

std::string vec_str(const std::vector<std::int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

MapInfo describe(const TensorView& map) {
  check(map.device.is_cpu(), ErrorKind::Type, "map: region acquisition is not implemented on CUDA yet; pass a CPU array");
  check(map.dtype == DType::Float32 || map.dtype == DType::Float64, ErrorKind::Type,
        "map: expected dtype float32 or float64, got ", dtype_name(map.dtype));
  check(map.ndim >= 2 && map.ndim <= 4, ErrorKind::Value, "map: expected [N, *spatial] with 1 to 3 spatial axes, got shape ",
        map.shape_str());
  check(map.checked_numel("map") > 0, ErrorKind::Value, "map: empty (shape ", map.shape_str(), ")");
  check(map.data != nullptr, ErrorKind::Value, "map: data pointer is null");
  MapInfo m;
  m.nsp = map.ndim - 1;
  m.N = map.shape[0];
  m.st[0] = map.strides[0];
  for (int d = 0; d < m.nsp; ++d) {
    m.S[d] = map.shape[d + 1];
    m.st[d + 1] = map.strides[d + 1];
  }
  return m;
}

std::vector<std::int64_t> grid_of(const MapInfo& m, const std::vector<std::int64_t>& patch,
                                  const std::vector<std::int64_t>& stride) {
  check(static_cast<int>(patch.size()) == m.nsp, ErrorKind::Value, "patch: expected ", m.nsp,
        " sizes (one per spatial axis), got ", vec_str(patch));
  check(static_cast<int>(stride.size()) == m.nsp, ErrorKind::Value, "stride: expected ", m.nsp,
        " steps (one per spatial axis), got ", vec_str(stride));
  std::vector<std::int64_t> g(m.nsp);
  for (int d = 0; d < m.nsp; ++d) {
    check(patch[d] >= 1 && patch[d] <= m.S[d], ErrorKind::Value, "patch: size ", patch[d], " on spatial axis ", d,
          " must be in [1, ", m.S[d], "]");
    check(stride[d] >= 1, ErrorKind::Value, "stride: step ", stride[d], " on spatial axis ", d, " must be >= 1");
    g[d] = (m.S[d] - patch[d]) / stride[d] + 1;
  }
  return g;
}

double at(const TensorView& map, const MapInfo& m, std::int64_t n, std::int64_t i, std::int64_t j, std::int64_t k) {
  const std::int64_t off = n * m.st[0] + i * m.st[1] + j * m.st[2] + k * m.st[3];
  return map.dtype == DType::Float32 ? static_cast<const float*>(map.data)[off] : static_cast<const double*>(map.data)[off];
}

/// "[n, i(, j(, k))]" for a voxel or a patch corner of image n.
std::string position(const MapInfo& m, std::int64_t n, std::int64_t i, std::int64_t j, std::int64_t k) {
  return "[" + std::to_string(n) + ", " + std::to_string(i) + (m.nsp > 1 ? ", " + std::to_string(j) : "") +
         (m.nsp > 2 ? ", " + std::to_string(k) : "") + "]";
}

/// Image n as doubles [S0][S1][S2] (row-major), scaled by 2^-shift where sums of `window` values
/// could overflow: shift is 0 (the values as they are) unless the largest finite |value| times the
/// window exceeds 2^1000, and then just enough that no window sum of finite values can overflow
/// (a power of two: exact, but for values that the scaling takes below 2^-1022). Returns an error
/// message naming the first NaN in row-major order, or an empty string.
std::string load_image(const TensorView& map, const MapInfo& m, std::int64_t n, double window, std::vector<double>& V,
                       int& shift) {
  V.resize(static_cast<std::size_t>(m.S[0] * m.S[1] * m.S[2]));
  std::size_t e = 0;
  double vmax = 0.0;
  for (std::int64_t i = 0; i < m.S[0]; ++i)
    for (std::int64_t j = 0; j < m.S[1]; ++j)
      for (std::int64_t k = 0; k < m.S[2]; ++k) {
        const double v = at(map, m, n, i, j, k);
        if (v != v) return "map: NaN at " + position(m, n, i, j, k);
        if (std::fabs(v) > vmax && std::fabs(v) < INFINITY) vmax = std::fabs(v);
        V[e++] = v;
      }
  shift = 0;
  if (vmax * window > 0x1p1000) {
    // |v| < 2^(ilogb(vmax) + 1), window < 2^(ilogb(window) + 1): scaled sums stay below 2^1020
    shift = std::ilogb(vmax) + std::ilogb(window) + 2 - 1020;
    for (double& v : V) v = std::ldexp(v, -shift);
  }
  return {};
}

/// Sums of the windows [q·step, q·step + width) of a line of `len` values (read at x[t·xs]), for
/// q < count, written to out[q·os]. Each window is the suffix of one block of `width` values plus the
/// prefix of the next (blocks start at multiples of width), so a sum only ever adds values inside its
/// window: a huge value elsewhere in the line cannot absorb it (a summed-area table would).
void window_sums(const double* x, std::int64_t xs, std::int64_t len, std::int64_t width, std::int64_t step,
                 std::int64_t count, double* out, std::int64_t os, std::vector<double>& pre, std::vector<double>& suf) {
  pre.resize(static_cast<std::size_t>(len));
  suf.resize(static_cast<std::size_t>(len));
  // Block by block (no integer division per value: it was most of slice_scores' time).
  for (std::int64_t t0 = 0; t0 < len; t0 += width) {
    const std::int64_t t1 = t0 + width < len ? t0 + width : len;
    double acc = 0.0;
    for (std::int64_t t = t0; t < t1; ++t) pre[t] = acc = acc + x[t * xs];
    acc = 0.0;
    for (std::int64_t t = t1 - 1; t >= t0; --t) suf[t] = acc = acc + x[t * xs];
  }
  const std::int64_t step_mod = step % width;
  for (std::int64_t q = 0, a = 0, a_mod = 0; q < count; ++q, a += step) {  // a_mod = a % width
    out[q * os] = a_mod == 0 ? suf[a] : suf[a] + pre[a + width - 1];
    a_mod += step_mod;
    if (a_mod >= width) a_mod -= width;
  }
}

/// All patch means of every image: scores[n][g] with g row-major over the grid. Separable window sums
/// along each spatial axis (O(voxels) per axis, whatever the patch size).
/// `what` names a window in errors ("patch"; "slice" for slice_scores' whole-slice windows).
std::vector<std::vector<double>> all_patches(const TensorView& map, const MapInfo& m, const std::vector<std::int64_t>& patch,
                                             const std::vector<std::int64_t>& stride, std::int64_t G[3],
                                             const char* what = "patch") {
  const std::vector<std::int64_t> g = grid_of(m, patch, stride);
  std::int64_t sz[3] = {1, 1, 1}, sd[3] = {1, 1, 1};
  for (int d = 0; d < 3; ++d) G[d] = 1;
  for (int d = 0; d < m.nsp; ++d) {
    sz[d] = patch[d];
    sd[d] = stride[d];
    G[d] = g[d];
  }
  const std::int64_t S0 = m.S[0], S1 = m.S[1], S2 = m.S[2];
  const double volume = static_cast<double>(sz[0] * sz[1] * sz[2]);
  std::vector<std::vector<double>> out(static_cast<std::size_t>(m.N));
  std::vector<std::string> errors(static_cast<std::size_t>(m.N));  // per image: the report names the first
  detail::parallel_for(m.N, 1, [&](std::int64_t begin, std::int64_t end, int) {
    std::vector<double> V, A, B, pre, suf;
    for (std::int64_t n = begin; n < end; ++n) {
      std::string& error = errors[static_cast<std::size_t>(n)];
      int shift = 0;
      error = load_image(map, m, n, volume, V, shift);
      if (!error.empty()) continue;
      A.resize(static_cast<std::size_t>(S0 * S1 * G[2]));  // [S0][S1][G2]: windows along axis 2
      for (std::int64_t i = 0; i < S0; ++i)
        for (std::int64_t j = 0; j < S1; ++j)
          window_sums(&V[(i * S1 + j) * S2], 1, S2, sz[2], sd[2], G[2], &A[(i * S1 + j) * G[2]], 1, pre, suf);
      B.resize(static_cast<std::size_t>(S0 * G[1] * G[2]));  // [S0][G1][G2]: then along axis 1
      for (std::int64_t i = 0; i < S0; ++i)
        for (std::int64_t c = 0; c < G[2]; ++c)
          window_sums(&A[i * S1 * G[2] + c], G[2], S1, sz[1], sd[1], G[1], &B[i * G[1] * G[2] + c], G[2], pre, suf);
      std::vector<double>& o = out[static_cast<std::size_t>(n)];  // [G0][G1][G2]: then along axis 0
      o.resize(static_cast<std::size_t>(G[0] * G[1] * G[2]));
      for (std::int64_t bc = 0; bc < G[1] * G[2]; ++bc)
        window_sums(&B[bc], G[1] * G[2], S0, sz[0], sd[0], G[0], &o[bc], G[1] * G[2], pre, suf);
      for (std::size_t q = 0; q < o.size(); ++q) {
        o[q] = std::ldexp(o[q] / volume, shift);  // shift 0: the plain mean
        if (o[q] != o[q] && error.empty()) {  // no NaN in V: the patch holds both +inf and -inf
          const std::int64_t g = static_cast<std::int64_t>(q);
          error = std::string("map: the ") + what + " at " +
                  position(m, n, g / (G[1] * G[2]) * sd[0], (g / G[2]) % G[1] * sd[1], g % G[2] * sd[2]) +
                  " holds both +inf and -inf, so its mean is undefined; replace the infinities first (e.g. by "
                  "the map's finite extremes, or by +-DBL_MAX)";
        }
      }
    }
  });
  for (const std::string& e : errors)
    if (!e.empty()) throw Error(ErrorKind::Value, e);
  return out;
}

void write_float(const TensorView& out, std::int64_t off, double v) {
  if (out.dtype == DType::Float32)
    static_cast<float*>(out.data)[off] = static_cast<float>(v);
  else
    static_cast<double*>(out.data)[off] = v;
}

/// An output of `shape` on the CPU, apart from map (and from `other` when given: top_regions' pair).
void check_out(const TensorView& out, const char* what, const std::vector<std::int64_t>& shape, bool int64,
               const TensorView& map, const TensorView* other = nullptr, const char* other_what = nullptr) {
  check(out.device.is_cpu(), ErrorKind::Value, what, ": must be on the CPU like map");
  if (int64)
    check(out.dtype == DType::Int64, ErrorKind::Type, what, ": expected int64, got ", dtype_name(out.dtype));
  else
    check(out.dtype == DType::Float32 || out.dtype == DType::Float64, ErrorKind::Type, what,
          ": expected float32 or float64, got ", dtype_name(out.dtype));
  check(out.sizes() == shape, ErrorKind::Value, what, ": has shape ", out.shape_str(), ", expected ", vec_str(shape));
  std::vector<NamedView> outs;
  if (other) outs.push_back({*other, other_what});
  outs.push_back({out, what});
  check_outputs(outs, {{map, "map"}});
}

}  // namespace

void patch_scores(const TensorView& map, const std::vector<std::int64_t>& patch, const std::vector<std::int64_t>& stride,
                  const TensorView& out) {
  const MapInfo m = describe(map);
  const std::vector<std::int64_t> g = grid_of(m, patch, stride);
  std::vector<std::int64_t> shape = {m.N};
  shape.insert(shape.end(), g.begin(), g.end());
  check_out(out, "out", shape, false, map);
  std::int64_t G[3];
  const auto scores = all_patches(map, m, patch, stride, G);
  for (std::int64_t n = 0; n < m.N; ++n)
    for (std::int64_t a = 0; a < G[0]; ++a)
      for (std::int64_t b = 0; b < G[1]; ++b)
        for (std::int64_t c = 0; c < G[2]; ++c) {
          const std::int64_t idx[4] = {n, a, b, c};
          std::int64_t off = 0;
          for (int d = 0; d < out.ndim; ++d) off += idx[d] * out.strides[d];
          write_float(out, off, scores[static_cast<std::size_t>(n)][static_cast<std::size_t>((a * G[1] + b) * G[2] + c)]);
        }
}

void top_regions(const TensorView& map, std::int64_t b, const std::vector<std::int64_t>& patch,
                 const std::vector<std::int64_t>& stride, const TensorView& corners, const TensorView& scores) {
  const MapInfo m = describe(map);
  check(b >= 0, ErrorKind::Value, "b: must be >= 0, got ", b);
  check_out(corners, "corners", {b, static_cast<std::int64_t>(m.nsp) + 1}, true, map);
  check_out(scores, "scores", {b}, false, map, &corners, "corners");
  std::int64_t G[3];
  const auto all = all_patches(map, m, patch, stride, G);
  const std::int64_t per = G[0] * G[1] * G[2];
  // The patches are taken by score (descending), ties by the lower (image, patch) index. The greedy
  // below usually stops long before the end, so the order is made a window at a time (nth_element,
  // then a sort of the window; each window 4x the last) instead of sorting every patch: with stride
  // 1 there are about as many patches as voxels.
  std::vector<double> flat;
  flat.reserve(static_cast<std::size_t>(m.N * per));
  for (const auto& v : all) flat.insert(flat.end(), v.begin(), v.end());
  auto score_of = [&](std::int64_t i) { return flat[static_cast<std::size_t>(i)]; };
  auto before = [&](std::int64_t x, std::int64_t y) { return flat[x] > flat[y] || (flat[x] == flat[y] && x < y); };
  std::vector<std::int64_t> order(flat.size());
  std::iota(order.begin(), order.end(), 0);
  std::size_t sorted = 0, window = std::max<std::size_t>(4096, 64 * static_cast<std::size_t>(b));
  auto sort_more = [&] {  // order[0, sorted) is the final order's prefix; extend it by a window
    const std::size_t end = std::min(order.size(), sorted + window);
    if (end < order.size()) std::nth_element(order.begin() + sorted, order.begin() + end, order.end(), before);
    std::sort(order.begin() + sorted, order.begin() + end, before);
    sorted = end;
    window *= 4;
  };
  std::int64_t sz[3] = {1, 1, 1}, sd[3] = {1, 1, 1};
  for (int d = 0; d < m.nsp; ++d) {
    sz[d] = patch[d];
    sd[d] = stride[d];
  }
  struct Box {
    std::int64_t n, lo[3];
  };
  std::vector<Box> chosen;
  std::vector<double> chosen_scores;
  // Chosen boxes by the cells of a grid whose cells are one patch wide: a box touches at most 2 cells
  // per axis, and two boxes that overlap share the cell of a common voxel, so a candidate is compared
  // with the few boxes registered in its own cells (O(1) per candidate instead of O(b)).
  const std::int64_t cells[3] = {m.S[0] / sz[0] + 1, m.S[1] / sz[1] + 1, m.S[2] / sz[2] + 1};
  std::unordered_map<std::int64_t, std::vector<std::size_t>> by_cell;
  auto for_cells = [&](const Box& box, auto&& fn) {
    std::int64_t c0[3], c1[3];
    for (int d = 0; d < 3; ++d) {
      c0[d] = box.lo[d] / sz[d];
      c1[d] = (box.lo[d] + sz[d] - 1) / sz[d];
    }
    for (std::int64_t x = c0[0]; x <= c1[0]; ++x)
      for (std::int64_t y = c0[1]; y <= c1[1]; ++y)
        for (std::int64_t z = c0[2]; z <= c1[2]; ++z)
          if (!fn(((box.n * cells[0] + x) * cells[1] + y) * cells[2] + z)) return false;
    return true;
  };
  for (std::size_t r = 0; r < order.size(); ++r) {
    if (static_cast<std::int64_t>(chosen.size()) == b) break;
    if (r == sorted) sort_more();
    const std::int64_t i = order[r];
    const std::int64_t n = i / per, g = i % per;
    const std::int64_t pos[3] = {g / (G[1] * G[2]), (g / G[2]) % G[1], g % G[2]};
    const Box box{n, {pos[0] * sd[0], pos[1] * sd[1], pos[2] * sd[2]}};
    const bool free = for_cells(box, [&](std::int64_t key) {
      const auto it = by_cell.find(key);
      if (it == by_cell.end()) return true;
      for (const std::size_t k : it->second) {
        const Box& c = chosen[k];
        bool all_axes = true;
        for (int d = 0; d < 3; ++d) all_axes = all_axes && box.lo[d] < c.lo[d] + sz[d] && c.lo[d] < box.lo[d] + sz[d];
        if (all_axes) return false;
      }
      return true;
    });
    if (!free) continue;
    chosen.push_back(box);
    chosen_scores.push_back(score_of(i));
    for_cells(box, [&](std::int64_t key) {
      by_cell[key].push_back(chosen.size() - 1);
      return true;
    });
  }
  check(static_cast<std::int64_t>(chosen.size()) == b, ErrorKind::Value, "b: asked for ", b,
        " non-overlapping patches, but the greedy selection (best first) found only ", chosen.size(), " (map ",
        map.shape_str(), ", patch ", vec_str(patch), ", stride ", vec_str(stride), ")");
  for (std::int64_t r = 0; r < b; ++r) {
    const Box& c = chosen[static_cast<std::size_t>(r)];
    auto* base = static_cast<std::int64_t*>(corners.data);
    base[r * corners.strides[0]] = c.n;
    for (int d = 0; d < m.nsp; ++d) base[r * corners.strides[0] + (d + 1) * corners.strides[1]] = c.lo[d];
    write_float(scores, r * scores.strides[0], chosen_scores[static_cast<std::size_t>(r)]);
  }
}

void slice_scores(const TensorView& map, int axis, const TensorView& out) {
  const MapInfo m = describe(map);
  const int a = axis < 0 ? axis + map.ndim : axis;
  check(a >= 1 && a < map.ndim, ErrorKind::Value, "axis: must name a spatial axis of map (1..", map.ndim - 1,
        " or negative), got ", axis);
  check_out(out, "out", {m.N, map.shape[a]}, false, map);
  // A patch spanning every axis but `axis`, one voxel thick along it, with stride 1.
  std::vector<std::int64_t> patch(m.S, m.S + m.nsp), stride(m.nsp, 1);
  patch[a - 1] = 1;
  std::int64_t G[3];
  const auto all = all_patches(map, m, patch, stride, G, "slice");
  for (std::int64_t n = 0; n < m.N; ++n)
    for (std::int64_t s = 0; s < map.shape[a]; ++s)
      write_float(out, n * out.strides[0] + s * out.strides[1], all[static_cast<std::size_t>(n)][static_cast<std::size_t>(s)]);
}

}  // namespace labelwise
