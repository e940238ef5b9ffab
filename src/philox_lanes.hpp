// labelwise — Philox-4x32-10 bits of consecutive counters, vectorised (src/cpu/philox_lanes.inc).
#pragma once

#include <cstdint>

namespace labelwise {
namespace detail {

/// out[j] = rng::bits64(seed, stream, index0 + j) for j in [0, n): the same bits, 16 counters per step,
/// in the instruction set cpu_isa() picks (once per process: the bits are the same on every one).
void philox_bits64_block(std::uint64_t seed, std::uint32_t stream, std::uint64_t index0, std::int64_t n,
                         std::uint64_t* out);

namespace isa_philox_base {
void philox_bits64_lanes(std::uint64_t, std::uint32_t, std::uint64_t, std::int64_t, std::uint64_t*);
}
namespace isa_philox_avx2 {
void philox_bits64_lanes(std::uint64_t, std::uint32_t, std::uint64_t, std::int64_t, std::uint64_t*);
}
namespace isa_philox_avx512 {
void philox_bits64_lanes(std::uint64_t, std::uint32_t, std::uint64_t, std::int64_t, std::uint64_t*);
}

}  // namespace detail
}  // namespace labelwise
