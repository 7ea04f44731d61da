// CIFAR-10 binary batches: records of one label byte and a 3x32x32 image in CHW order.
#pragma once

#include <cstdint>
#include <string>

#include "formats/data_array.h"

namespace trainer::formats {

inline constexpr int64_t kCifar10RecordBytes = 1 + 3 * 32 * 32;

// What is wrong with a batch file of `size` bytes that is not a whole number of records (for an InputError).
std::string cifar10_size_problem(uint64_t size);

// Appends one batch file's images (u8 [3, 32, 32]) to x and labels (u8 []) to y, in place in the mapped file.
// A size that is not a multiple of 3073 bytes is an InputError naming the file and the size.
void read_cifar10(const std::string& path, Column* x, Column* y, int64_t spill_bytes = kDefaultSpillBytes);

}  // namespace trainer::formats
