// The CIFAR-10 binary reader: images and labels are read in place from the batch file, record by record.
#include "formats/data_cifar.h"

#include <fmt/format.h>

#include "engine/util/error.h"

namespace trainer::formats {

std::string cifar10_size_problem(uint64_t size) {
  const uint64_t whole = size / kCifar10RecordBytes;
  return fmt::format(
      "the size {} bytes is not a multiple of {} (1 label byte and a 3x32x32 image per "
      "record): {} whole records and {} bytes more",
      size, kCifar10RecordBytes, whole, size - whole * kCifar10RecordBytes);
}

void read_cifar10(const std::string& path, Column* x, Column* y, int64_t spill_bytes) {
  const std::string name = file_name(path);
  auto bytes = load_file(path, spill_bytes);
  const uint64_t size = bytes->size();
  if (size == 0 || size % kCifar10RecordBytes != 0)
    throw InputError(name, cifar10_size_problem(size),
                     "CIFAR-10 binary batches hold 10000 records of 3073 bytes (30730000 bytes); CIFAR-100 "
                     "(2 label bytes) and the Python version are other formats");
  const int64_t n = static_cast<int64_t>(size / kCifar10RecordBytes);
  Column xs(engine::DType::u8, engine::Shape{3, 32, 32});
  Column ys(engine::DType::u8, engine::Shape{});
  xs.add(Segment{bytes, 1, kCifar10RecordBytes, n, name, {}});
  ys.add(Segment{bytes, 0, kCifar10RecordBytes, n, name, {}});
  x->append(std::move(xs));
  y->append(std::move(ys));
}

}  // namespace trainer::formats
