// Integer codes of the op vocabulary, shared by the CPU (csrc/*.cpp) and CUDA (csrc/cuda/*) kernels.
//
// The names live in one table, skipkern/reference.py (ACTIVATIONS, SKIPS: a name's position is its
// code). Python validates a name once, at the op entry, and passes the code down; tests check that the
// enumerators below are k<Name> = position for every name there. Bindings turn an int into an enum with
// act_from_code / skip_from_code, which only guard the range (an out-of-range enum would be undefined).
#pragma once

#include <stdexcept>
#include <string>

namespace skipkern {

enum class Act : int { kRelu = 0, kIdentity = 1, kTanh = 2, kGelu = 3 };
enum class Skip : int { kNone = 0, kIdentity = 1, kDense = 2 };
constexpr int kNumAct = 4, kNumSkip = 3;
// The bindings' interface version (module attribute ABI), checked by skipkern/backends: 2 = integer codes.
constexpr int kAbi = 2;

inline Act act_from_code(long code) {
  if (code < 0 || code >= kNumAct)
    throw std::invalid_argument("activation code must be in [0, " + std::to_string(kNumAct) + "), got " +
                                std::to_string(code) + " (codes: skipkern.reference.ACTIVATION_CODES)");
  return static_cast<Act>(code);
}

inline Skip skip_from_code(long code) {
  if (code < 0 || code >= kNumSkip)
    throw std::invalid_argument("skip code must be in [0, " + std::to_string(kNumSkip) + "), got " +
                                std::to_string(code) + " (codes: skipkern.reference.SKIP_CODES)");
  return static_cast<Skip>(code);
}

}  // namespace skipkern
