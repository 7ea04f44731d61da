// CIFAR-10 binary batches: records of one label byte and a 3x32x32 image in CHW order.
#pragma once

#include <cstdint>
#include <string>

#include "formats/data_array.h"
#include "formats/data_pickle.h"

namespace trainer::formats {

inline constexpr int64_t kCifar10RecordBytes = 1 + 3 * 32 * 32;

// What is wrong with a batch file of `size` bytes that is not a whole number of records (for an InputError).
std::string cifar10_size_problem(uint64_t size);

// Appends one batch file's images (u8 [3, 32, 32]) to x and labels (u8 []) to y, in place in the mapped file.
// A size that is not a multiple of 3073 bytes is an InputError naming the file and the size.
//
// A file that is a pickle is a batch of the Python version of CIFAR-10 or CIFAR-100 (the files Keras's
// cifar10.load_data and cifar100.load_data read: data_batch_1 ... data_batch_5 and test_batch, or train and
// test): a dict whose 'data' is a numpy array of N x 3072 bytes (the images, channels first), read in place,
// and whose labels are the list 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100, as load_data's default
// label_mode), or the list `label_key` names ('coarse_labels').
void read_cifar10(const std::string& path, Column* x, Column* y, int64_t spill_bytes = kDefaultSpillBytes,
                  const std::string& label_key = "");

// The images of a CIFAR Python batch (the pickle in `bytes`): its 'data', an array of u8 [N, 3072] (or
// [N, 3, 32, 32]), in place; an InputError naming `name` otherwise. root_out, when given, takes the dict.
pickle::Array cifar_python_images(const std::shared_ptr<const Bytes>& bytes, const std::string& name,
                                  pickle::Ref* root_out = nullptr);

}  // namespace trainer::formats
