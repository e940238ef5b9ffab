// labelwise — umbrella header (framework-free parts; adapters live in labelwise/interop/).
#pragma once

#include "labelwise/core/config.hpp"
#include "labelwise/core/error.hpp"
#include "labelwise/core/parallel.hpp"
#include "labelwise/core/tensor_view.hpp"
#include "labelwise/acquisition/selection.hpp"
#include "labelwise/acquisition/batchbald.hpp"
#include "labelwise/acquisition/diversity.hpp"
#include "labelwise/acquisition/regions.hpp"
#include "labelwise/uncertainty/metrics.hpp"
#include "labelwise/propagation/binomial.hpp"
#include "labelwise/propagation/certified.hpp"
#include "labelwise/propagation/label_issues.hpp"
#include "labelwise/propagation/knn.hpp"
#include "labelwise/propagation/slices.hpp"
#include "labelwise/propagation/spreading.hpp"
