// Linked into CPU-only builds: CUDA work gets a clear error, never a link error.
#include "labelwise/core/parallel.hpp"
#include "batchbald_backend.hpp"
#include "diversity_backend.hpp"
#include "head_score_backend.hpp"
#include "knn_backend.hpp"
#include "selection_backend.hpp"
#include "uncertainty_backend.hpp"

namespace labelwise {
bool built_with_cuda() { return false; }
namespace detail {
ScoreFailure score_cuda(const ScoreJob&) {
  throw Error(ErrorKind::Runtime, "x: is a CUDA tensor, but labelwise was built without CUDA");
}
HeadFailure head_cuda(const HeadJob&) {
  throw Error(ErrorKind::Runtime, "features: is a CUDA tensor, but labelwise was built without CUDA");
}
DiversityFailure coreset_cuda(const CoresetJob&) {
  throw Error(ErrorKind::Runtime, "features: is a CUDA tensor, but labelwise was built without CUDA");
}
DiversityFailure weighted_kmeans_cuda(const WeightedKmeansJob&) {
  throw Error(ErrorKind::Runtime, "features: is a CUDA tensor, but labelwise was built without CUDA");
}
DiversityFailure badge_cuda(const BadgeJob&) {
  throw Error(ErrorKind::Runtime, "x: is a CUDA tensor, but labelwise was built without CUDA");
}
void copy_to_host(void*, const void*, std::size_t, int, void*) {
  throw Error(ErrorKind::Runtime, "a CUDA tensor was passed, but labelwise was built without CUDA");
}
void copy_to_device(void*, const void*, std::size_t, int, void*) {
  throw Error(ErrorKind::Runtime, "a CUDA tensor was passed, but labelwise was built without CUDA");
}
KnnCudaFailure knn_cuda(const KnnCudaJob&) {
  throw Error(ErrorKind::Runtime, "features: is a CUDA tensor, but labelwise was built without CUDA");
}
std::string cublas_load_error() { return "built without CUDA"; }
void batchbald_cuda(const BatchBaldCudaJob&) {
  throw Error(ErrorKind::Runtime, "x: is a CUDA tensor, but labelwise was built without CUDA");
}
void widen_to_float32_cuda(const TensorView&, float*, void*) {
  throw Error(ErrorKind::Runtime, "x: is a CUDA tensor, but labelwise was built without CUDA");
}
float* cuda_alloc_floats(std::int64_t, int, void*) {
  throw Error(ErrorKind::Runtime, "x: is a CUDA tensor, but labelwise was built without CUDA");
}
void cuda_free_floats(float*, int, void*) noexcept {}
SelectFailure select_cuda(const SelectJob&) {  // not reached: the front doors name their input first
  throw Error(ErrorKind::Runtime, "a CUDA tensor was passed, but labelwise was built without CUDA");
}
}  // namespace detail
}  // namespace labelwise
