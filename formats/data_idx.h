// IDX files (the MNIST family): big-endian headers, raw or gzip-compressed.
#pragma once

#include <string>

#include "formats/data_array.h"

namespace trainer::formats {

// One IDX file as a column: the first dimension counts records, the rest is the record's shape. u8 data is
// used in place (mapped, or decompressed once); i8, i16, i32, f32 and f64 data are converted to host order
// (i8 and i16 widen to i32). A bad magic number, a short header or short data is an InputError with the file
// and byte offset.
Column read_idx(const std::string& path, int64_t spill_bytes = kDefaultSpillBytes);

}  // namespace trainer::formats
