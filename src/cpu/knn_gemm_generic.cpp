// Baseline build of the kNN GEMM block (any CPU).
#define LABELWISE_KNN_NS generic
#define LABELWISE_KNN_EIGEN_NS labelwise_eigen_generic
#include "knn_gemm.inc"
