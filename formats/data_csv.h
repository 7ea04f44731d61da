// CSV datasets: numeric features and one label column, parsed once into f32 features and i64 (whole numbers)
// or f32 labels, in memory or in a temporary file for large files.
#pragma once

#include <string>

#include "formats/data_array.h"

namespace trainer::formats {

struct CsvOptions {
  bool header = true;        // the first row names the columns
  std::string label_column;  // a header name or a 0-based index (negative counts from the end); "" = the last
  int64_t spill_bytes = kDefaultSpillBytes;
};

// Appends the file's features ([F] f32) to x and labels to y. A ragged row or a cell that is not a number is
// an InputError with file:line (and :col for the cell).
void read_csv(const std::string& path, const CsvOptions& options, Column* x, Column* y);

}  // namespace trainer::formats
