// Active learning on a real brain MRI, in C++ with LibTorch: a small 2D U-Net with an MC-dropout head
// (labelwise::MCDropoutHead) segments axial slices of the Colin27 T1 MRI into 9 AAL lobe classes;
// every round the unlabelled slices are scored with head->score (BALD / BalEntAcq maps, one fused pass
// over K MC-dropout samples), reduced to one score per slice with labelwise::slice_scores, the best
// ones picked — the best slice of each of the best non-overlapping windows of neighbouring slices
// (labelwise::top_regions), or plain labelwise::top_k with --window 1 — and "revealed" (their atlas
// labels added to the training set), and the network is trained further. Dice on held-out slices is
// printed every round. At the end the rest of the pool is auto-labelled voxel by voxel with
// labelwise::certified_auto_label (target error 5 %, delta 10 %; one threshold, then one per class),
// calibrated on sparse random voxel "clicks" drawn from the pool itself, and the realised error on the
// auto-labelled voxels is printed
// next to the bound; PNG overlays of one held-out slice (image, ground truth, prediction, BALD,
// BalEntAcq, and all of them side by side) are written.
//
// Data (nothing is downloaded): Colin27 average T1 ("ch2"; Holmes et al., J Comput Assist Tomogr 1998,
// MNI) and the AAL atlas (Tzourio-Mazoyer et al., NeuroImage 2002) as shipped with MRIcron in Debian's
// mricron-data (apt-get install mricron-data): /usr/share/mricron/templates/{ch2,aal}.nii.gz and
// aal.nii.txt, gzip NIfTI-1 files read here with zlib. The 116 AAL regions map to 9 classes by the
// first digit of their AAL code, as labelwise.data.aal_lobes does in Python.
//
// Usage: mri_active_learning [--quick] [--out DIR] [--rounds R] [--per-round B] [--steps S]
//                            [--strategy bald|balentacq|random] [--samples K] [--seed N] [--width W]
//                            [--lr LR] [--window N] [--templates DIR] [--threads T]
// Exit status 77 when the templates are missing (ctest: skipped).
#include <zlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "labelwise/acquisition/regions.hpp"
#include "labelwise/acquisition/selection.hpp"
#include "labelwise/propagation/certified.hpp"
#include "labelwise/segmentation/heads.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- NIfTI-1 (.nii.gz) ------------------------------------------------------------------------------

struct Volume {
  std::int64_t nx = 0, ny = 0, nz = 0;  // x fastest on disk
  std::vector<float> data;              // x + nx * (y + ny * z), scaled by scl_slope / scl_inter
  std::array<float, 12> srow{};         // the sform rows (voxel -> world)
  std::string path;
  float at(std::int64_t x, std::int64_t y, std::int64_t z) const { return data[x + nx * (y + ny * z)]; }
};

std::vector<unsigned char> gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<unsigned char> out;
  unsigned char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string why = msg ? msg : "";
  gzclose(f);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) throw std::runtime_error(path + ": gzip error: " + why);
  return out;
}

template <typename T>
T read_as(const unsigned char* p, bool swap) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, p, sizeof(T));
  if (swap) std::reverse(b, b + sizeof(T));
  T v;
  std::memcpy(&v, b, sizeof(T));
  return v;
}

/// A 3D NIfTI-1 single-file volume (magic "n+1"), any of the common scalar datatypes, either byte order.
Volume read_nifti(const std::string& path) {
  const std::vector<unsigned char> raw = gunzip(path);
  if (raw.size() < 352) throw std::runtime_error(path + ": too short for a NIfTI-1 header");
  const unsigned char* h = raw.data();
  bool swap = false;
  if (read_as<std::int32_t>(h, false) != 348) {
    swap = true;
    if (read_as<std::int32_t>(h, true) != 348) throw std::runtime_error(path + ": not a NIfTI-1 file (sizeof_hdr)");
  }
  if (std::memcmp(h + 344, "n+1", 4) != 0) throw std::runtime_error(path + ": not a single-file NIfTI-1 (magic)");
  std::int16_t dim[8];
  for (int i = 0; i < 8; ++i) dim[i] = read_as<std::int16_t>(h + 40 + 2 * i, swap);
  if (dim[0] < 3 || (dim[0] > 3 && dim[4] > 1)) throw std::runtime_error(path + ": expected a 3D volume");
  const auto datatype = read_as<std::int16_t>(h + 70, swap);
  const auto vox_offset = static_cast<std::size_t>(read_as<float>(h + 108, swap));
  float slope = read_as<float>(h + 112, swap), inter = read_as<float>(h + 116, swap);
  if (!std::isfinite(slope) || slope == 0.0f) slope = 1.0f, inter = 0.0f;
  if (!std::isfinite(inter)) inter = 0.0f;
  Volume v;
  v.path = path;
  v.nx = dim[1], v.ny = dim[2], v.nz = dim[3];
  for (int i = 0; i < 12; ++i) v.srow[i] = read_as<float>(h + 280 + 4 * i, swap);
  const std::size_t n = static_cast<std::size_t>(v.nx * v.ny * v.nz);
  std::size_t size = 0;
  switch (datatype) {
    case 2: case 256: size = 1; break;     // uint8, int8
    case 4: case 512: size = 2; break;     // int16, uint16
    case 8: case 16: size = 4; break;      // int32, float32
    case 64: size = 8; break;              // float64
    default: throw std::runtime_error(path + ": unsupported NIfTI datatype " + std::to_string(datatype));
  }
  if (raw.size() < vox_offset + n * size) throw std::runtime_error(path + ": truncated voxel data");
  v.data.resize(n);
  const unsigned char* p = raw.data() + vox_offset;
  for (std::size_t i = 0; i < n; ++i, p += size) {
    double x = 0;
    switch (datatype) {
      case 2: x = *p; break;
      case 256: x = static_cast<std::int8_t>(*p); break;
      case 4: x = read_as<std::int16_t>(p, swap); break;
      case 512: x = read_as<std::uint16_t>(p, swap); break;
      case 8: x = read_as<std::int32_t>(p, swap); break;
      case 16: x = read_as<float>(p, swap); break;
      case 64: x = read_as<double>(p, swap); break;
    }
    v.data[i] = static_cast<float>(x * slope + inter);
  }
  return v;
}

/// AAL label value -> lobe class (0 background, 1 frontal, 2 insula, 3 limbic, 4 occipital, 5 parietal,
/// 6 subcortical, 7 temporal, 8 cerebellum) by the first digit of the AAL code in aal.nii.txt.
std::vector<int> aal_lobe_table(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<int> lut(256, 0);
  std::string line;
  int regions = 0;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    int value, code;
    std::string name;
    if (!(is >> value >> name >> code) || value < 1 || value > 255) continue;
    const int digit = code / 1000;
    if (digit < 2 || digit > 9) throw std::runtime_error(path + ": unexpected AAL code " + std::to_string(code));
    lut[value] = digit - 1;  // 2 -> 1 (frontal) ... 9 -> 8 (cerebellum)
    ++regions;
  }
  if (regions != 116) throw std::runtime_error(path + ": expected the 116 AAL regions, found " + std::to_string(regions));
  return lut;
}

const std::array<const char*, 9> kClassNames{"background", "frontal",  "insula",      "limbic",    "occipital",
                                             "parietal",   "subcortical", "temporal", "cerebellum"};
constexpr std::int64_t kClasses = 9;

/// Axial slices, downsampled by `down` in-plane (mean of the image, label of the block's first voxel),
/// every `zstep`-th slice that contains brain; rows = anterior -> posterior, columns = x; padded to a
/// multiple of 4. images [S, 1, H, W] (zero mean, unit variance), labels [S, H, W] int64, z in [-1, 1].
struct Slices {
  at::Tensor images, labels, z;
  std::int64_t h0 = 0, w0 = 0;  ///< the real pixels: rows [0, h0), columns [0, w0); the rest is padding
};

Slices make_slices(const Volume& t1, const Volume& aal, const std::vector<int>& lut, int down, int zstep) {
  if (t1.nx != aal.nx || t1.ny != aal.ny || t1.nz != aal.nz)
    throw std::runtime_error("the T1 (" + std::to_string(t1.nx) + "x" + std::to_string(t1.ny) + "x" +
                             std::to_string(t1.nz) + ") and the AAL atlas are not on the same grid");
  for (int i = 0; i < 12; ++i)
    if (std::abs(t1.srow[i] - aal.srow[i]) > 1e-3f) throw std::runtime_error("the T1 and AAL sforms differ");
  const std::int64_t W0 = t1.nx / down, H0 = t1.ny / down;
  const std::int64_t H = (H0 + 3) / 4 * 4, W = (W0 + 3) / 4 * 4;
  std::vector<std::int64_t> zs;
  for (std::int64_t z = 0; z < t1.nz; z += zstep) {
    bool brain = false;
    for (std::int64_t i = 0; i < t1.nx * t1.ny && !brain; ++i) brain = lut[int(aal.data[z * t1.nx * t1.ny + i])] > 0;
    if (brain) zs.push_back(z);
  }
  const std::int64_t S = static_cast<std::int64_t>(zs.size());
  at::Tensor img = at::zeros({S, 1, H, W}, at::kFloat), lab = at::zeros({S, H, W}, at::kLong);
  auto ia = img.accessor<float, 4>();
  auto la = lab.accessor<std::int64_t, 3>();
  for (std::int64_t s = 0; s < S; ++s)
    for (std::int64_t r = 0; r < H0; ++r)
      for (std::int64_t c = 0; c < W0; ++c) {
        const std::int64_t y = (H0 - 1 - r) * down;  // anterior at the top
        const std::int64_t x = c * down;
        double sum = 0;
        for (int dy = 0; dy < down; ++dy)
          for (int dx = 0; dx < down; ++dx) sum += t1.at(x + dx, y + dy, zs[s]);
        ia[s][0][r][c] = static_cast<float>(sum / (down * down));
        la[s][r][c] = lut[static_cast<int>(aal.at(x, y, zs[s]))];
      }
  // normalise over the real pixels, then pad with the minimum (as the Python example does)
  const auto real = img.slice(2, 0, H0).slice(3, 0, W0);
  const double mean = real.mean().item<double>(), sd = real.std().item<double>();
  img = (img - mean) / sd;
  const float lo = static_cast<float>((real.min().item<double>() - mean) / sd);
  img.slice(2, H0).fill_(lo);
  img.slice(3, W0).fill_(lo);
  return {img, lab, at::linspace(-1.0, 1.0, S, at::kFloat), H0, W0};
}

/// [n, 1, H, W] images + slice positions -> [n, 4, H, W]: image, row, column and slice coordinates in [-1, 1]
/// (lobe boundaries are largely a matter of where a pixel is).
at::Tensor with_coords(const at::Tensor& img, const at::Tensor& z) {
  const auto n = img.size(0), H = img.size(2), W = img.size(3);
  const auto rows = at::linspace(-1.0, 1.0, H, at::kFloat).view({1, 1, H, 1}).expand({n, 1, H, W});
  const auto cols = at::linspace(-1.0, 1.0, W, at::kFloat).view({1, 1, 1, W}).expand({n, 1, H, W});
  const auto zz = z.view({n, 1, 1, 1}).expand({n, 1, H, W});
  return at::cat({img, rows, cols, zz}, 1);
}

// ---- the network: a small 2D U-Net ending in an MC-dropout head ------------------------------------

struct BlockImpl : torch::nn::Module {
  BlockImpl(std::int64_t in, std::int64_t out)
      : c1(register_module("c1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)))),
        n1(register_module("n1", torch::nn::BatchNorm2d(out))),
        c2(register_module("c2", torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, 3).padding(1)))),
        n2(register_module("n2", torch::nn::BatchNorm2d(out))) {}
  at::Tensor forward(const at::Tensor& x) {
    return torch::relu(n2(c2(torch::relu(n1(c1(x))))));
  }
  torch::nn::Conv2d c1;
  torch::nn::BatchNorm2d n1;
  torch::nn::Conv2d c2;
  torch::nn::BatchNorm2d n2;
};
TORCH_MODULE(Block);

/// Two down- and two up-sampling levels (w, 2w, 4w channels); features() -> [B, w, H, W] for the head.
struct UNetImpl : torch::nn::Module {
  UNetImpl(std::int64_t in, std::int64_t w, double p)
      : e1(register_module("e1", Block(in, w))),
        e2(register_module("e2", Block(w, 2 * w))),
        mid(register_module("mid", Block(2 * w, 4 * w))),
        u2(register_module("u2", torch::nn::ConvTranspose2d(torch::nn::ConvTranspose2dOptions(4 * w, 2 * w, 2).stride(2)))),
        d2(register_module("d2", Block(4 * w, 2 * w))),
        u1(register_module("u1", torch::nn::ConvTranspose2d(torch::nn::ConvTranspose2dOptions(2 * w, w, 2).stride(2)))),
        d1(register_module("d1", Block(2 * w, w))),
        head(register_module("head", labelwise::MCDropoutHead(w, kClasses, p, 2))) {}
  at::Tensor features(const at::Tensor& x) {
    const auto a = e1(x);
    const auto b = e2(torch::max_pool2d(a, 2));
    const auto m = mid(torch::max_pool2d(b, 2));
    const auto y = d2(torch::cat({u2(m), b}, 1));
    return d1(torch::cat({u1(y), a}, 1));
  }
  at::Tensor forward(const at::Tensor& x) { return head(features(x)); }
  Block e1, e2, mid;
  torch::nn::ConvTranspose2d u2;
  Block d2;
  torch::nn::ConvTranspose2d u1;
  Block d1;
  labelwise::MCDropoutHead head;
};
TORCH_MODULE(UNet);

/// Mean Dice over the foreground classes present in the truth, and per class.
std::pair<double, std::vector<double>> dice(const at::Tensor& pred, const at::Tensor& truth) {
  std::vector<double> per(kClasses, std::nan(""));
  double sum = 0;
  int n = 0;
  for (std::int64_t c = 1; c < kClasses; ++c) {
    const auto a = pred == c, b = truth == c;
    const double nb = b.sum().item<double>();
    if (nb == 0) continue;
    const double inter = (a & b).sum().item<double>(), na = a.sum().item<double>();
    per[c] = 2.0 * inter / (na + nb);
    sum += per[c];
    ++n;
  }
  return {n ? sum / n : 0.0, per};
}

// ---- PNG: 8-bit RGB, one IDAT (zlib compress2), CRCs from zlib's crc32 ------------------------------

struct Rgb {
  std::int64_t w = 0, h = 0;
  std::vector<unsigned char> px;  // h * w * 3
  Rgb(std::int64_t w_, std::int64_t h_) : w(w_), h(h_), px(static_cast<std::size_t>(w_ * h_ * 3), 0) {}
  unsigned char* at(std::int64_t r, std::int64_t c) { return &px[static_cast<std::size_t>((r * w + c) * 3)]; }
};

void put_u32(std::vector<unsigned char>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<unsigned char>(v >> s));
}

void png_chunk(std::vector<unsigned char>& out, const char* type, const std::vector<unsigned char>& data) {
  put_u32(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32(out, static_cast<std::uint32_t>(crc32(0L, out.data() + start, static_cast<uInt>(out.size() - start))));
}

void write_png(const std::string& path, const Rgb& img) {
  std::vector<unsigned char> raw;
  raw.reserve(static_cast<std::size_t>(img.h * (img.w * 3 + 1)));
  for (std::int64_t r = 0; r < img.h; ++r) {
    raw.push_back(0);  // filter: none
    const auto* row = &img.px[static_cast<std::size_t>(r * img.w * 3)];
    raw.insert(raw.end(), row, row + img.w * 3);
  }
  uLongf zlen = compressBound(static_cast<uLong>(raw.size()));
  std::vector<unsigned char> z(zlen);
  if (compress2(z.data(), &zlen, raw.data(), static_cast<uLong>(raw.size()), 9) != Z_OK)
    throw std::runtime_error("PNG: compress2 failed");
  z.resize(zlen);
  std::vector<unsigned char> out{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<unsigned char> ihdr;
  put_u32(ihdr, static_cast<std::uint32_t>(img.w));
  put_u32(ihdr, static_cast<std::uint32_t>(img.h));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8 bits, RGB, deflate, adaptive filtering, no interlace
  png_chunk(out, "IHDR", ihdr);
  png_chunk(out, "IDAT", z);
  png_chunk(out, "IEND", {});
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

/// A perceptually ordered black -> purple -> orange -> yellow colour ramp, t in [0, 1].
std::array<unsigned char, 3> heat(double t) {
  static const double stops[5][3] = {{0, 0, 4}, {87, 16, 110}, {188, 55, 84}, {249, 142, 9}, {252, 255, 164}};
  t = std::min(1.0, std::max(0.0, std::isfinite(t) ? t : 0.0)) * 4;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  std::array<unsigned char, 3> c{};
  for (int k = 0; k < 3; ++k) c[k] = static_cast<unsigned char>(std::lround(stops[i][k] * (1 - f) + stops[i + 1][k] * f));
  return c;
}

const unsigned char kLobeColours[kClasses][3] = {{0, 0, 0},     {230, 25, 75},  {60, 180, 75},
                                                 {255, 225, 25}, {0, 130, 200}, {245, 130, 48},
                                                 {145, 30, 180}, {70, 240, 240}, {240, 50, 230}};

constexpr int kZoom = 3;

Rgb gray_panel(const at::Tensor& img /*[H, W]*/) {
  const auto H = img.size(0), W = img.size(1);
  const double lo = img.min().item<double>(), hi = img.max().item<double>();
  auto a = img.accessor<float, 2>();
  Rgb out(W * kZoom, H * kZoom);
  for (std::int64_t r = 0; r < H * kZoom; ++r)
    for (std::int64_t c = 0; c < W * kZoom; ++c) {
      const auto g = static_cast<unsigned char>(std::lround(255.0 * (a[r / kZoom][c / kZoom] - lo) / (hi - lo + 1e-12)));
      std::memset(out.at(r, c), g, 3);
    }
  return out;
}

Rgb label_panel(const at::Tensor& img, const at::Tensor& lab /*[H, W] int64*/) {
  Rgb out = gray_panel(img);
  auto l = lab.accessor<std::int64_t, 2>();
  for (std::int64_t r = 0; r < out.h; ++r)
    for (std::int64_t c = 0; c < out.w; ++c) {
      const auto k = l[r / kZoom][c / kZoom];
      if (k == 0) continue;
      unsigned char* p = out.at(r, c);
      for (int j = 0; j < 3; ++j) p[j] = static_cast<unsigned char>((p[j] * 2 + kLobeColours[k][j] * 3) / 5);
    }
  return out;
}

/// A map drawn between its own 2nd and 98th percentiles of the finite values (written to *lo_out /
/// *hi_out): a per-image scale, so the brightest pixels are bright even where the model is confident
/// everywhere, and two images do not compare — the caller prints the scale (a fixed scale such as
/// [0, ln C] nats left typical BALD maps, ~0.1 nats, nearly black). BalEntAcq: a heavy tail and -inf
/// on certain pixels.
Rgb map_panel(const at::Tensor& map /*[H, W] float*/, double* lo_out, double* hi_out) {
  const auto finite = map.masked_select(at::isfinite(map)).to(at::kDouble);
  double lo = 0, hi = 1;
  if (finite.numel() > 0) {
    const auto sorted = std::get<0>(finite.sort());
    const auto n = sorted.numel();
    lo = sorted[static_cast<std::int64_t>(0.02 * double(n - 1))].item<double>();
    hi = sorted[static_cast<std::int64_t>(0.98 * double(n - 1))].item<double>();
  }
  auto a = map.accessor<float, 2>();
  Rgb out(map.size(1) * kZoom, map.size(0) * kZoom);
  for (std::int64_t r = 0; r < out.h; ++r)
    for (std::int64_t c = 0; c < out.w; ++c) {
      const double v = a[r / kZoom][c / kZoom];
      const auto col = heat(std::isfinite(v) ? (v - lo) / (hi - lo + 1e-12) : (v > 0 ? 1.0 : 0.0));
      std::memcpy(out.at(r, c), col.data(), 3);
    }
  *lo_out = lo;
  *hi_out = hi;
  return out;
}

Rgb side_by_side(const std::vector<Rgb>& panels) {
  const std::int64_t gap = 4;
  std::int64_t w = 0, h = 0;
  for (const auto& p : panels) w += p.w + gap, h = std::max(h, p.h);
  Rgb out(w - gap, h);
  std::fill(out.px.begin(), out.px.end(), 255);
  std::int64_t x0 = 0;
  for (const auto& p : panels) {
    for (std::int64_t r = 0; r < p.h; ++r) std::memcpy(out.at(r, x0), &p.px[static_cast<std::size_t>(r * p.w * 3)], p.w * 3);
    x0 += p.w + gap;
  }
  return out;
}

// ---- the active-learning loop ---------------------------------------------------------------------

struct Args {
  bool quick = false;
  std::string out = "mri-al-out";
  std::string templates = "/usr/share/mricron/templates";
  std::string strategy = "bald";
  int rounds = 4, per_round = 3, steps = 50, samples = 16, width = 12, seed = 0, threads = 0;
  int down = 3, zstep = 3, batch = 6, initial = 4, window = 3;
  double p = 0.3, lr = 3e-3;
};

Args parse(int argc, char** argv) {
  Args a;
  bool rounds = false, steps = false, samples = false, per_round = false, width = false;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(k + ": missing value");
      return argv[++i];
    };
    if (k == "--quick") a.quick = true;
    else if (k == "--out") a.out = next();
    else if (k == "--templates") a.templates = next();
    else if (k == "--strategy") a.strategy = next();
    else if (k == "--rounds") a.rounds = std::stoi(next()), rounds = true;
    else if (k == "--per-round") a.per_round = std::stoi(next()), per_round = true;
    else if (k == "--steps") a.steps = std::stoi(next()), steps = true;
    else if (k == "--samples") a.samples = std::stoi(next()), samples = true;
    else if (k == "--seed") a.seed = std::stoi(next());
    else if (k == "--width") a.width = std::stoi(next()), width = true;
    else if (k == "--lr") a.lr = std::stod(next());
    else if (k == "--window") a.window = std::stoi(next());
    else if (k == "--threads") a.threads = std::stoi(next());
    else if (k == "--help" || k == "-h") {
      std::cout << "usage: mri_active_learning [--quick] [--out DIR] [--rounds R] [--per-round B] [--steps S]\n"
                   "       [--strategy bald|balentacq|random] [--samples K] [--seed N] [--width W] [--lr LR]\n"
                   "       [--window N (spread each batch over windows of N neighbouring slices; 1 = top-k)]\n"
                   "       [--templates DIR] [--threads T]\n";
      std::exit(0);
    } else
      throw std::runtime_error("unknown argument " + k + " (see --help)");
  }
  if (a.quick) {  // a smoke test: coarse slices, a narrow net, few steps
    a.down = 4, a.zstep = 4, a.batch = 4, a.initial = 3;
    if (!width) a.width = 8;
    if (!rounds) a.rounds = 3;
    if (!per_round) a.per_round = 2;
    if (!steps) a.steps = 20;
    if (!samples) a.samples = 8;
  }
  if (a.strategy != "bald" && a.strategy != "balentacq" && a.strategy != "random")
    throw std::runtime_error("--strategy: expected bald, balentacq or random, got " + a.strategy);
  if (a.rounds < 1 || a.per_round < 1 || a.steps < 1 || a.samples < 2 || a.window < 1)
    throw std::runtime_error("--rounds, --per-round, --steps, --window must be >= 1 and --samples >= 2");
  return a;
}

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  const auto t_start = Clock::now();
  Args args;
  try {
    args = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  const std::string t1_path = args.templates + "/ch2.nii.gz", aal_path = args.templates + "/aal.nii.gz",
                    txt_path = args.templates + "/aal.nii.txt";
  for (const auto& p : {t1_path, aal_path, txt_path})
    if (!exists(p)) {
      std::cerr << p << " not found: install Debian's mricron-data (apt-get install mricron-data)\n";
      return 77;
    }
  try {
    if (args.threads > 0) torch::set_num_threads(args.threads);
    torch::manual_seed(static_cast<std::uint64_t>(args.seed));
    std::mt19937_64 rng(static_cast<std::uint64_t>(args.seed) * 0x9E3779B97F4A7C15ull + 1);

    // -- data
    const Volume t1 = read_nifti(t1_path), aal = read_nifti(aal_path);
    const std::vector<int> lut = aal_lobe_table(txt_path);
    const Slices sl = make_slices(t1, aal, lut, args.down, args.zstep);
    const std::int64_t S = sl.images.size(0), H = sl.images.size(2), W = sl.images.size(3);
    const at::Tensor inputs = with_coords(sl.images, sl.z);
    std::cout << "Colin27 T1 " << t1.nx << "x" << t1.ny << "x" << t1.nz << " + AAL (116 regions -> 9 lobes): " << S
              << " axial slices of " << H << "x" << W << " (in-plane downsampled by " << args.down << ", one slice in "
              << args.zstep << ")  [" << std::fixed << std::setprecision(2) << seconds_since(t_start) << " s]" << std::endl;

    // -- split: every 5th slice is held out for Dice; a few evenly spaced slices are the labelled seed
    std::vector<std::int64_t> test, pool, labelled;
    for (std::int64_t s = 0; s < S; ++s) (s % 5 == 2 ? test : pool).push_back(s);
    for (int i = 0; i < args.initial; ++i) {
      const auto j = static_cast<std::size_t>((2 * i + 1) * pool.size() / (2 * args.initial));
      labelled.push_back(pool[j]);
    }
    for (auto s : labelled) pool.erase(std::find(pool.begin(), pool.end(), s));
    const auto test_idx = at::tensor(test, at::kLong);
    const std::int64_t shown = test[test.size() / 2];  // the held-out slice drawn at the end

    UNet net(4, args.width, args.p);
    torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(args.lr));
    std::cout << "U-Net width " << args.width << " + ";
    net->head->pretty_print(std::cout);
    std::cout << ", " << labelled.size()
              << " labelled slices, pool " << pool.size() << ", held out " << test.size() << "; strategy "
              << args.strategy << ", K = " << args.samples << std::endl;

    std::vector<double> dice_per_round;
    for (int round = 0; round <= args.rounds; ++round) {
      const auto t_round = Clock::now();
      // -- train on the labelled slices (warm start: the network keeps learning from round to round)
      net->train();
      double loss_sum = 0;
      const int steps = round == 0 ? 2 * args.steps : args.steps;
      for (int step = 0; step < steps; ++step) {
        std::vector<std::int64_t> batch;
        for (int i = 0; i < args.batch; ++i)
          batch.push_back(labelled[std::uniform_int_distribution<std::size_t>(0, labelled.size() - 1)(rng)]);
        const auto idx = at::tensor(batch, at::kLong);
        auto x = inputs.index_select(0, idx);
        auto target = sl.labels.index_select(0, idx);
        if (rng() & 1) {  // left-right flip of image and labels (the lobes are symmetric; the column
          x = x.flip(3);  // coordinate channel flips too, so it stays a mirror-symmetric position)
          target = target.flip(2);
        }
        opt.zero_grad();
        const auto loss = torch::nn::functional::cross_entropy(net->forward(x), target);
        loss.backward();
        opt.step();
        loss_sum += loss.item<double>();
      }
      const double train_s = seconds_since(t_round);
      // -- evaluate: Dice on the held-out slices
      net->eval();
      torch::NoGradGuard no_grad;
      const auto pred = net->forward(inputs.index_select(0, test_idx)).argmax(1);
      const auto [mean_dice, per_class] = dice(pred, sl.labels.index_select(0, test_idx));
      dice_per_round.push_back(mean_dice);
      std::cout << "round " << round << ": " << std::setw(3) << labelled.size() << " labelled slices, loss "
                << std::setprecision(3) << loss_sum / steps << ", Dice " << std::setprecision(3) << mean_dice
                << " (held out)  train " << std::setprecision(1) << train_s << " s" << std::flush;
      if (round == args.rounds || pool.empty()) {
        std::cout << "\n";
        break;
      }
      // -- acquire: per-pixel uncertainty of the pool from the head, one score per slice, the best slices
      const auto t_acq = Clock::now();
      const auto pool_idx = at::tensor(pool, at::kLong);
      const auto feats = net->features(inputs.index_select(0, pool_idx));
      const auto maps = net->head->score(feats, args.samples, {labelwise::Metric::Bald, labelwise::Metric::BalEntAcq},
                                         /*seed=*/static_cast<std::uint64_t>(args.seed) * 1000 + round);
      const std::int64_t b = std::min<std::int64_t>(args.per_round, static_cast<std::int64_t>(pool.size()));
      at::Tensor chosen = at::empty({b}, at::kLong);
      if (args.strategy == "random") {
        const auto perm = at::randperm(static_cast<std::int64_t>(pool.size()), at::kLong);
        chosen.copy_(perm.slice(0, 0, b));
      } else {
        at::Tensor m = maps.at(args.strategy == "bald" ? labelwise::Metric::Bald : labelwise::Metric::BalEntAcq);
        // BalEntAcq is -inf on certain pixels: those count as the least informative finite value
        const auto finite = m.masked_select(at::isfinite(m));
        const double floor = finite.numel() ? finite.min().item<double>() : 0.0;
        m = at::nan_to_num(m, floor, finite.numel() ? finite.max().item<double>() : 0.0, floor).contiguous();
        // [P, H, W] as one volume [1, P, H, W]: slice_scores over axis 1 = mean over each slice's pixels
        const auto vol = m.unsqueeze(0);
        at::Tensor per_slice = at::empty({1, m.size(0)}, at::kFloat);
        labelwise::slice_scores(labelwise::torch_interop::view(vol), 1, labelwise::torch_interop::view(per_slice));
        // Spread the batch: the b best non-overlapping windows of `window` neighbouring pool slices
        // (labelwise::top_regions on the per-slice scores, in slice order), the best slice of each
        // window revealed; neighbouring slices look alike, a plain top-k would take runs of them.
        const std::int64_t P = m.size(0);
        const std::int64_t window = std::max<std::int64_t>(1, std::min<std::int64_t>(args.window, P / b));
        bool spread = window > 1;
        if (spread) {
          at::Tensor corners = at::empty({b, 2}, at::kLong), win_scores = at::empty({b}, at::kDouble);
          try {
            labelwise::top_regions(labelwise::torch_interop::view(per_slice), b, {window}, {1},
                                   labelwise::torch_interop::view(corners), labelwise::torch_interop::view(win_scores));
            for (std::int64_t i = 0; i < b; ++i) {
              const std::int64_t start = corners[i][1].item<std::int64_t>();
              chosen[i] = start + per_slice[0].slice(0, start, start + window).argmax().item<std::int64_t>();
            }
          } catch (const labelwise::Error&) {  // fewer than b disjoint windows left in a small pool
            spread = false;
          }
        }
        if (!spread)
          labelwise::top_k(labelwise::torch_interop::view(per_slice.select(0, 0)), b,
                           labelwise::torch_interop::view(chosen));
      }
      std::vector<std::int64_t> picked;
      for (std::int64_t i = 0; i < b; ++i) picked.push_back(pool[static_cast<std::size_t>(chosen[i].item<std::int64_t>())]);
      std::cout << ", acquire " << std::setprecision(1) << seconds_since(t_acq) << " s -> reveal slices";
      for (auto s : picked) {
        std::cout << " " << s;
        labelled.push_back(s);
        pool.erase(std::find(pool.begin(), pool.end(), s));
      }
      std::cout << std::endl;
    }

    net->eval();
    torch::NoGradGuard no_grad;
    // -- certified auto-labelling of the rest of the pool, per voxel. Calibration: 4000 voxels ("clicks")
    // drawn uniformly at random, without replacement, from the pool voxels themselves, whose labels a
    // human gives (here: the atlas); they are not auto-labelled. Because the clicks are a random sample
    // of the very voxels the bound is about, it holds however strongly neighbouring voxels share their
    // errors (docs/propagation.md, "Voxels and images"); clicks on a few other slices would not.
    if (!pool.empty()) {
      const auto pool_idx = at::tensor(pool, at::kLong);
      at::Tensor pool_probs;
      net->head->score(net->features(inputs.index_select(0, pool_idx)), args.samples, {labelwise::Metric::Bald},
                       /*seed=*/778, &pool_probs);
      // [n, C, h0, w0] float32: the MC-dropout mean prediction on the real pixels only (the padding,
      // trivially background, would inflate the coverage and dilute the error)
      pool_probs = pool_probs.slice(2, 0, sl.h0).slice(3, 0, sl.w0).contiguous();
      const auto truth = sl.labels.index_select(0, pool_idx).slice(1, 0, sl.h0).slice(2, 0, sl.w0).contiguous();
      const std::int64_t n_vox = truth.numel();
      // at most 5 % of the voxels: the bound covers all pool voxels above the threshold, clicks included;
      // the auto-labelled rest's error can exceed it by the factor N / (N - clicks above the threshold)
      const std::int64_t n_clicks = std::min<std::int64_t>(4000, n_vox / 20);
      std::vector<std::int64_t> order(static_cast<std::size_t>(n_vox));
      std::iota(order.begin(), order.end(), std::int64_t{0});
      for (std::int64_t i = 0; i < n_clicks; ++i)  // partial Fisher-Yates: the first n_clicks are the sample
        std::swap(order[static_cast<std::size_t>(i)],
                  order[std::uniform_int_distribution<std::size_t>(static_cast<std::size_t>(i), order.size() - 1)(rng)]);
      at::Tensor clicked = at::zeros(truth.sizes(), at::kBool);
      {
        const auto flat = clicked.view({-1});
        auto c = flat.accessor<bool, 1>();
        for (std::int64_t i = 0; i < n_clicks; ++i) c[order[static_cast<std::size_t>(i)]] = true;
      }
      const auto clicks = truth.masked_fill(clicked.logical_not(), -1);  // calibration labels, -1 elsewhere
      labelwise::CertifyOptions copt;
      copt.target_error = 0.05;
      copt.delta = 0.1;
      at::Tensor accepted = at::empty(truth.sizes(), at::kBool);
      at::Tensor auto_labels = at::empty(truth.sizes(), at::kLong);
      // One threshold for all voxels, then one per predicted class (per_class: every class must meet
      // the target on its own, so that easy background cannot hide a lobe that is mostly wrong).
      for (const bool per_class : {false, true}) {
        copt.per_class = per_class;
        const labelwise::AutoLabelResult r = labelwise::certified_auto_label(
            labelwise::torch_interop::view(pool_probs), labelwise::torch_interop::view(pool_probs),
            labelwise::torch_interop::view(clicks), labelwise::torch_interop::view(accepted),
            labelwise::torch_interop::view(auto_labels), copt);
        const auto& cert = r.certificate;
        if (!per_class)
          std::cout << "auto-label the " << pool.size() << " unlabelled pool slices (" << r.n_pool << " voxels), "
                    << cert.n_calibration << " calibration clicks drawn from them\n";
        std::cout << (per_class ? "  one threshold per class: " : "  one threshold: ");
        if (!cert.certified) {
          std::cout << "nothing certified (" << cert.reason << ")\n";
          continue;
        }
        const auto automatic = accepted.logical_and(clicked.logical_not());  // the clicks keep the human label
        const double n_auto = automatic.sum().item<double>();
        const auto wrong = (auto_labels != truth).logical_and(automatic);
        double worst = 0.0;  // the worst predicted class's realised error (classes with >= 100 voxels)
        for (std::int64_t c = 0; c < kClasses; ++c) {
          const auto is_c = automatic.logical_and(auto_labels == c);
          const double n_c = is_c.sum().item<double>();
          if (n_c >= 100) worst = std::max(worst, wrong.logical_and(is_c).sum().item<double>() / n_c);
        }
        if (per_class) {
          int certified_classes = 0;
          for (const auto& k : r.class_certificates) certified_classes += k.certified;
          std::cout << certified_classes << " of " << kClasses << " classes certified, ";
        } else {
          std::cout << "threshold " << std::setprecision(4) << cert.threshold << ", ";
        }
        std::cout << "coverage " << std::setprecision(3) << n_auto / static_cast<double>(n_vox - n_clicks)
                  << ", realised error " << (n_auto > 0 ? wrong.sum().item<double>() / n_auto : 0.0)
                  << " (worst class " << worst << ") against the target " << copt.target_error << ", delta "
                  << copt.delta << "\n";
      }
    }

    // -- PNG overlays of one held-out slice
    const auto x = inputs.slice(0, shown, shown + 1);
    const auto feats = net->features(x);
    at::Tensor mean;
    const auto maps = net->head->score(feats, args.samples, {labelwise::Metric::Bald, labelwise::Metric::BalEntAcq},
                                       /*seed=*/12345, &mean);
    const auto pred = mean.argmax(1)[0];
    const auto image = sl.images[shown][0];
    const auto truth = sl.labels[shown];
    ::mkdir(args.out.c_str(), 0755);
    double bald_lo = 0, bald_hi = 0, bal_lo = 0, bal_hi = 0;  // the maps' colour scales (per image)
    const std::vector<std::pair<std::string, Rgb>> panels{
        {"image", gray_panel(image)},
        {"ground_truth", label_panel(image, truth)},
        {"prediction", label_panel(image, pred)},
        {"bald_per_image_scale", map_panel(maps.at(labelwise::Metric::Bald)[0], &bald_lo, &bald_hi)},
        {"balentacq_per_image_scale", map_panel(maps.at(labelwise::Metric::BalEntAcq)[0], &bal_lo, &bal_hi)}};
    std::vector<Rgb> all;
    for (const auto& [name, img] : panels) {
      write_png(args.out + "/" + name + ".png", img);
      all.push_back(img);
    }
    write_png(args.out + "/overview.png", side_by_side(all));
    const auto [shown_dice, shown_per_class] = dice(pred.unsqueeze(0), truth.unsqueeze(0));
    std::cout << "held-out slice " << shown << ": Dice " << std::setprecision(3) << shown_dice << " (";
    bool first = true;
    for (std::int64_t c = 1; c < kClasses; ++c)
      if (!std::isnan(shown_per_class[c])) {
        std::cout << (first ? "" : ", ") << kClassNames[c] << " " << std::setprecision(2) << shown_per_class[c];
        first = false;
      }
    std::cout << "); mean BALD " << std::setprecision(4) << maps.at(labelwise::Metric::Bald).mean().item<double>()
              << "\nwrote image.png, ground_truth.png, prediction.png, bald_per_image_scale.png (colours from "
              << std::setprecision(3) << bald_lo << " to " << bald_hi << " nats: this slice's 2nd-98th percentile), "
              << "balentacq_per_image_scale.png (" << bal_lo << " to " << bal_hi << "), overview.png to " << args.out << "\nDice per round:";
    for (double d : dice_per_round) std::cout << " " << std::setprecision(3) << d;
    std::cout << "\ntotal " << std::setprecision(1) << seconds_since(t_start) << " s\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
