// The CIFAR-10 binary reader: images and labels are read in place from the batch file, record by record.
#include "formats/data_cifar.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "engine/util/error.h"
#include "formats/data_pickle.h"

namespace trainer::formats {

std::string cifar10_size_problem(uint64_t size) {
  const uint64_t whole = size / kCifar10RecordBytes;
  return fmt::format(
      "the size {} bytes is not a multiple of {} (1 label byte and a 3x32x32 image per "
      "record): {} whole records and {} bytes more",
      size, kCifar10RecordBytes, whole, size - whole * kCifar10RecordBytes);
}

namespace {

constexpr const char* kPythonHint =
    "a batch of the Python version of CIFAR-10 or CIFAR-100 is a dict of 'data' and 'labels' (or "
    "'fine_labels' and 'coarse_labels')";

void read_cifar_python(const std::shared_ptr<const Bytes>& bytes, const std::string& name,
                       const std::string& label_key, Column* x, Column* y) {
  pickle::Ref root;
  const pickle::Array a = cifar_python_images(bytes, name, &root);
  const char* hint = kPythonHint;
  const int64_t n = a.shape[0];
  const char* key = nullptr;
  const pickle::Value* labels = nullptr;
  if (!label_key.empty()) {
    key = label_key.c_str();
    labels = root->find(label_key);
  } else {
    for (const char* k : {"labels", "fine_labels"}) {
      if ((labels = root->find(k))) {
        key = k;
        break;
      }
    }
  }
  if (!labels)
    throw InputError(name,
                     label_key.empty() ? std::string("the pickle's dict has no 'labels' or 'fine_labels'")
                                       : fmt::format("the pickle's dict has no '{}' (y_key)", label_key),
                     hint);
  std::vector<uint8_t> ids(static_cast<size_t>(n));
  if (labels->kind == pickle::Value::Kind::list) {
    // A list of integers alone comes packed; any other list is a label that is not one.
    const size_t count = labels->items.empty() ? labels->ints.size() : labels->items.size();
    if (static_cast<int64_t>(count) != n)
      throw InputError(at_byte(name, labels->at),
                       fmt::format("'{}' holds {} labels for {} images", key, count, n), hint);
    for (int64_t i = 0; i < n; ++i) {
      const auto k = static_cast<size_t>(i);
      const pickle::Value* l = labels->items.empty() ? nullptr : labels->items[k].get();
      const int64_t v = l ? (l->kind == pickle::Value::Kind::integer ? l->integer : -1) : labels->ints[k];
      if (v < 0 || v > 255)
        throw InputError(at_byte(name, l ? l->at : labels->at),
                         fmt::format("label {} of '{}' is not a class id from 0 to 255", i, key), hint);
      ids[k] = static_cast<uint8_t>(v);
    }
  } else {
    const pickle::Array la = pickle::as_array(*labels, name, fmt::format("its '{}'", key));
    if (la.shape.size() != 1 || la.shape[0] != n)
      throw InputError(
          at_byte(name, labels->at),
          fmt::format("'{}' is an array of shape ({}) for {} images", key, fmt::join(la.shape, ", "), n),
          hint);
    std::vector<int64_t> values;
    if (!pickle::array_integers(la, &values))
      throw InputError(at_byte(name, labels->at),
                       fmt::format("'{}' holds {}, not class ids", key, engine::dtype_name(la.dtype)), hint);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = values[static_cast<size_t>(i)];
      if (v < 0 || v > 255)
        throw InputError(at_byte(name, labels->at),
                         fmt::format("label {} of '{}' is {}, not a class id from 0 to 255", i, key, v),
                         hint);
      ids[static_cast<size_t>(i)] = static_cast<uint8_t>(v);
    }
  }
  Column xs(engine::DType::u8, engine::Shape{3, 32, 32});
  Column ys(engine::DType::u8, engine::Shape{});
  xs.add(Segment{a.holder, a.offset, 3 * 32 * 32, n, name, {}});
  ys.add(Segment{Bytes::from_vector(std::move(ids)), 0, 1, n, name, {}});
  x->append(std::move(xs));
  y->append(std::move(ys));
}

}  // namespace

pickle::Array cifar_python_images(const std::shared_ptr<const Bytes>& bytes, const std::string& name,
                                  pickle::Ref* root_out) {
  const pickle::Ref root = pickle::load(bytes, name);
  if (root->kind != pickle::Value::Kind::dict)
    throw InputError(name, "the pickle holds no dict of data and labels", kPythonHint);
  const pickle::Value* data = root->find("data");
  if (!data) throw InputError(name, "the pickle's dict has no 'data'", kPythonHint);
  pickle::Array a = pickle::as_array(*data, name, "its 'data'");
  const bool flat = a.shape.size() == 2 && a.shape[1] == 3 * 32 * 32;
  const bool chw = a.shape.size() == 4 && a.shape[1] == 3 && a.shape[2] == 32 && a.shape[3] == 32;
  if (a.dtype != engine::DType::u8 || (!flat && !chw))
    throw InputError(
        at_byte(name, data->at),
        fmt::format("its 'data' is an array of {} of shape ({}), not the bytes of N images of 3072 "
                    "(3 x 32 x 32)",
                    engine::dtype_name(a.dtype), fmt::join(a.shape, ", ")),
        kPythonHint);
  if (root_out) *root_out = root;
  return a;
}

void read_cifar10(const std::string& path, Column* x, Column* y, int64_t spill_bytes,
                  const std::string& label_key) {
  const std::string name = file_name(path);
  auto bytes = load_file(path, spill_bytes);
  if (starts_as_pickle({reinterpret_cast<const char*>(bytes->data()), bytes->size()})) {
    read_cifar_python(bytes, name, label_key, x, y);
    return;
  }
  if (!label_key.empty())
    throw InputError(
        name,
        fmt::format("y_key = \"{}\" names a list of a CIFAR Python batch, and this is a binary batch",
                    label_key),
        "leave y_key out for CIFAR-10 binary batches");
  const uint64_t size = bytes->size();
  if (size == 0 || size % kCifar10RecordBytes != 0)
    throw InputError(name, cifar10_size_problem(size),
                     "CIFAR-10 binary batches hold 10000 records of 3073 bytes (30730000 bytes); CIFAR-100's "
                     "binary batches (2 label bytes) are another format (its Python version is read)");
  const int64_t n = static_cast<int64_t>(size / kCifar10RecordBytes);
  Column xs(engine::DType::u8, engine::Shape{3, 32, 32});
  Column ys(engine::DType::u8, engine::Shape{});
  xs.add(Segment{bytes, 1, kCifar10RecordBytes, n, name, {}});
  ys.add(Segment{bytes, 0, kCifar10RecordBytes, n, name, {}});
  x->append(std::move(xs));
  y->append(std::move(ys));
}

}  // namespace trainer::formats
