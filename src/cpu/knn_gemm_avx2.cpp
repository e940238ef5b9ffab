// AVX2 + FMA build of the kNN GEMM block (compiled with -mavx2 -mfma; chosen at run time).
#define LABELWISE_KNN_NS avx2
#define LABELWISE_KNN_EIGEN_NS labelwise_eigen_avx2
#include "knn_gemm.inc"
