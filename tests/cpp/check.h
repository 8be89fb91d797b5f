// A minimal check macro for the framework-free unit tests (no test framework to download):
// a failed CHECK prints the condition and location and makes the test binary exit non-zero.
#pragma once

#include <cstdio>

namespace lipkernels_test {

inline int& failures() {
  static int count = 0;
  return count;
}

// Returns the exit status for main().
inline int report(const char* test) {
  if (failures() == 0) {
    std::printf("%s: all checks passed\n", test);
    return 0;
  }
  std::printf("%s: %d check(s) FAILED\n", test, failures());
  return 1;
}

}  // namespace lipkernels_test

#define CHECK(condition)                                                              \
  do {                                                                                \
    if (!(condition)) {                                                               \
      ++lipkernels_test::failures();                                                  \
      std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #condition);       \
    }                                                                                 \
  } while (0)
