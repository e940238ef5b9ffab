// labelwise — the one exception type of the library.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace labelwise {

/// What went wrong, so that bindings can map it to the fitting exception
/// (Python: ValueError, TypeError, RuntimeError, KeyboardInterrupt).
enum class ErrorKind {
  Value,    ///< bad value or shape of an argument (NaN, wrong rank, empty, ...), or arrays on devices
            ///< that do not match each other
  Type,     ///< unsupported dtype, or a device the function does not run on (CUDA input to a CPU-only
            ///< function)
  Runtime,  ///< environment problem: built without CUDA, CUDA launch failure, ...
  Interrupted,  ///< the interrupt check (set_interrupt_check) asked to stop: Ctrl-C in Python
                ///< (KeyboardInterrupt); outputs may be partly written
};

/// The exception type thrown by labelwise for every bad argument, device or environment problem. The
/// message always names the argument, what was expected and what was given. A failed host allocation
/// is the standard library's std::bad_alloc (batchbald turns it into an Error(Runtime) that gives the
/// table's size; the Python module turns any into MemoryError).
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

/// Throws Error(kind, message built from args) when cond is false.
template <typename... Args>
inline void check(bool cond, ErrorKind kind, Args&&... args) {
  if (!cond) throw Error(kind, detail::concat(std::forward<Args>(args)...));
}

}  // namespace labelwise
