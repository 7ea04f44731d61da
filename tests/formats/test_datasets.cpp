// Dataset readers on small files written here (IDX raw and gzip, CIFAR-10 batches, NPY of every dtype, NPZ
// stored and deflated, CSV), their error messages, the real Fashion-MNIST files, and the loader over a real
// reader.
#include <doctest/doctest.h>
#include <gif_lib.h>
#include <png.h>
#include <zlib.h>
#include <cstddef>
#include <cstdio>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <vector>
// jpeglib.h needs size_t and FILE declared before it.
// clang-format off
#include <cstddef>
#include <cstdio>
#include <jpeglib.h>
// clang-format on

#include "engine/data/dataset.h"
#include "engine/util/error.h"
#include "formats/data_image.h"
#include "formats/data_pickle.h"
#include "formats/data_text.h"
#include "formats/datasets.h"
#include "formats/stream_output.h"

using namespace trainer;
using namespace trainer::formats;
using trainer::engine::DType;
using trainer::engine::Shape;
using trainer::engine::data::Dataset;
using trainer::engine::data::Layout;

namespace {

using Blob = std::vector<uint8_t>;

struct TempDir {
  std::string path;
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "trainer-datasets-XXXXXX").string();
    REQUIRE(mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string write(const std::string& name, const Blob& b) const {
    std::string p = path + "/" + name;
    std::ofstream(p, std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<long>(b.size()));
    return p;
  }
  std::string write_text(const std::string& name, const std::string& s) const {
    return write(name, Blob(s.begin(), s.end()));
  }
};

void put_be32(Blob& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}
void put_le(Blob& b, uint64_t v, int bytes) {
  for (int k = 0; k < bytes; ++k) b.push_back(static_cast<uint8_t>(v >> (8 * k)));
}
template <class T>
void put_raw(Blob& b, T v) {
  uint8_t tmp[sizeof(T)];
  std::memcpy(tmp, &v, sizeof(T));
  b.insert(b.end(), tmp, tmp + sizeof(T));
}

Blob idx(uint8_t type, const std::vector<uint32_t>& dims, const Blob& payload) {
  Blob b{0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) put_be32(b, d);
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

Blob deflate_bytes(const Blob& in, int window_bits) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  Blob out(deflateBound(&z, in.size()) + 64);
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}
Blob gzip(const Blob& in) {
  return deflate_bytes(in, 15 + 16);
}

Blob npy(const std::string& descr, const std::vector<int64_t>& shape, const Blob& data, int version = 1,
         bool fortran = false) {
  std::string dict =
      "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': (";
  for (int64_t d : shape) dict += std::to_string(d) + ", ";
  dict += "), }";
  const size_t prefix = version == 1 ? 10 : 12;
  while ((prefix + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  Blob b{0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(version), 0};
  put_le(b, dict.size(), version == 1 ? 2 : 4);
  b.insert(b.end(), dict.begin(), dict.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

struct ZipMember {
  std::string name;
  Blob data;
  bool deflated = false;
};

// A zip archive as numpy.savez writes it: local headers, then the central directory and its end record.
Blob zip(const std::vector<ZipMember>& members) {
  Blob b, cd;
  for (const auto& m : members) {
    const Blob body = m.deflated ? deflate_bytes(m.data, -15) : m.data;
    const uint32_t crc = static_cast<uint32_t>(crc32(0, m.data.data(), static_cast<uInt>(m.data.size())));
    const uint64_t offset = b.size();
    put_le(b, 0x04034b50, 4);
    put_le(b, 20, 2);
    put_le(b, 0, 2);
    put_le(b, m.deflated ? 8 : 0, 2);
    put_le(b, 0, 4);
    put_le(b, crc, 4);
    put_le(b, body.size(), 4);
    put_le(b, m.data.size(), 4);
    put_le(b, m.name.size(), 2);
    put_le(b, 4, 2);
    b.insert(b.end(), m.name.begin(), m.name.end());
    put_le(b, 0xcafe, 2);  // an unknown extra field, which readers skip
    put_le(b, 0, 2);
    b.insert(b.end(), body.begin(), body.end());
    put_le(cd, 0x02014b50, 4);
    put_le(cd, 20, 2);
    put_le(cd, 20, 2);
    put_le(cd, 0, 2);
    put_le(cd, m.deflated ? 8 : 0, 2);
    put_le(cd, 0, 4);
    put_le(cd, crc, 4);
    put_le(cd, body.size(), 4);
    put_le(cd, m.data.size(), 4);
    put_le(cd, m.name.size(), 2);
    put_le(cd, 0, 2);
    put_le(cd, 0, 2);
    put_le(cd, 0, 2);
    put_le(cd, 0, 2);
    put_le(cd, 0, 4);
    put_le(cd, offset, 4);
    cd.insert(cd.end(), m.name.begin(), m.name.end());
  }
  const uint64_t cd_offset = b.size();
  b.insert(b.end(), cd.begin(), cd.end());
  put_le(b, 0x06054b50, 4);
  put_le(b, 0, 4);
  put_le(b, members.size(), 2);
  put_le(b, members.size(), 2);
  put_le(b, cd.size(), 4);
  put_le(b, cd_offset, 4);
  put_le(b, 0, 2);
  return b;
}

DataSource source(std::vector<std::string> x, std::vector<std::string> y = {}, std::string format = "") {
  DataSource s;
  s.x = std::move(x);
  s.y = std::move(y);
  s.format = std::move(format);
  s.pos = SourcePos{"spec.toml", 7, 3};
  return s;
}

template <class T>
std::vector<T> sample(const Dataset& d, int64_t i) {
  std::vector<T> v(static_cast<size_t>(d.sample_shape().numel()));
  REQUIRE(engine::dtype_bytes(d.sample_dtype()) == sizeof(T));
  d.read_sample(i, v.data());
  return v;
}

int64_t label(const Dataset& d, int64_t i) {
  uint8_t buf[8] = {};
  d.read_label(i, buf);
  switch (d.label_dtype()) {
    case DType::u8:
      return buf[0];
    case DType::i32: {
      int32_t v;
      std::memcpy(&v, buf, 4);
      return v;
    }
    default: {
      int64_t v;
      std::memcpy(&v, buf, 8);
      return v;
    }
  }
}

// The message of the InputError that `f` throws ("" when it throws none).
template <class F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return std::string(e.what()) + (e.hint().empty() ? "" : " | hint: " + e.hint());
  }
  return "";
}

// Five 4x3 u8 images, element e of image i = 12 * i + e; labels 4 - i.
Blob idx_images() {
  Blob p;
  for (int i = 0; i < 5; ++i) {
    for (int e = 0; e < 12; ++e) p.push_back(static_cast<uint8_t>(12 * i + e));
  }
  return idx(0x08, {5, 4, 3}, p);
}
Blob idx_labels() {
  return idx(0x08, {5}, Blob{4, 3, 2, 1, 0});
}

void check_idx_dataset(const Dataset& d) {
  REQUIRE(d.size() == 5);
  CHECK(d.sample_shape() == Shape{4, 3});
  CHECK(d.sample_dtype() == DType::u8);
  CHECK(d.layout() == Layout::plain);
  CHECK(d.label_shape() == Shape{});
  for (int i = 0; i < 5; ++i) {
    auto s = sample<uint8_t>(d, i);
    CHECK(s[0] == 12 * i);
    CHECK(s[11] == 12 * i + 11);
    CHECK(label(d, i) == 4 - i);
  }
}

}  // namespace

TEST_SUITE("datasets") {
  TEST_CASE("IDX: raw, gzip, and gzip spilled to a temporary file") {
    TempDir dir;
    dir.write("train-images-idx3-ubyte", idx_images());
    dir.write("train-labels-idx1-ubyte", idx_labels());
    dir.write("train-images-idx3-ubyte.gz", gzip(idx_images()));
    dir.write("train-labels-idx1-ubyte.gz", gzip(idx_labels()));
    check_idx_dataset(
        *open_dataset(source({"train-images-idx3-ubyte"}, {"train-labels-idx1-ubyte"}), dir.path));
    auto gz = open_dataset(source({"train-images-idx3-ubyte.gz"}, {"train-labels-idx1-ubyte.gz"}), dir.path);
    check_idx_dataset(*gz);
    CHECK(gz->describe() == "train-images-idx3-ubyte.gz");
    // Past the spill threshold the decompressed data lives in an unlinked temporary file.
    DatasetOptions tiny;
    tiny.spill_bytes = 16;
    check_idx_dataset(*open_dataset(source({"train-images-idx3-ubyte.gz"}, {"train-labels-idx1-ubyte.gz"}),
                                    dir.path, tiny));
    // limit keeps the first samples.
    DataSource lim = source({"train-images-idx3-ubyte.gz"}, {"train-labels-idx1-ubyte.gz"});
    lim.limit = 2;
    auto two = open_dataset(lim, dir.path);
    CHECK(two->size() == 2);
    CHECK(label(*two, 1) == 3);
  }

  TEST_CASE("IDX: wider big-endian types convert to host order") {
    TempDir dir;
    Blob f;  // two float samples of [2]
    for (float v : {1.5f, -2.0f, 3.25f, 1e6f}) {
      uint32_t u;
      std::memcpy(&u, &v, 4);
      put_be32(f, u);
    }
    dir.write("x.idx", idx(0x0D, {2, 2}, f));
    Blob s;  // labels as big-endian int16
    for (int v : {7, -3}) {
      s.push_back(static_cast<uint8_t>((v >> 8) & 0xff));
      s.push_back(static_cast<uint8_t>(v & 0xff));
    }
    dir.write("y.idx", idx(0x0B, {2}, s));
    auto d = open_dataset(source({"x.idx"}, {"y.idx"}), dir.path);
    CHECK(d->sample_dtype() == DType::f32);
    CHECK(sample<float>(*d, 0) == std::vector<float>{1.5f, -2.0f});
    CHECK(sample<float>(*d, 1) == std::vector<float>{3.25f, 1e6f});
    CHECK(d->label_dtype() == DType::i32);
    CHECK(label(*d, 0) == 7);
    CHECK(label(*d, 1) == -3);
  }

  TEST_CASE("IDX errors: bad magic, truncation, a mismatched label count") {
    TempDir dir;
    dir.write("y.idx", idx_labels());
    Blob bad = idx_images();
    bad[2] = 0x07;
    dir.write("bad-images-idx3-ubyte", bad);
    std::string m =
        input_error([&] { open_dataset(source({"bad-images-idx3-ubyte"}, {"y.idx"}), dir.path); });
    CHECK(m.find("bad-images-idx3-ubyte: byte 0: bad magic number 0x00000703: not an IDX file") !=
          std::string::npos);
    CHECK(m.find("0x00000803") != std::string::npos);
    Blob html{'<', 'h', 't', 'm', 'l', '>'};
    dir.write("html-idx3-ubyte", html);
    CHECK(input_error([&] {
            open_dataset(source({"html-idx3-ubyte"}, {"y.idx"}), dir.path);
          }).find("bad magic number 0x3c68746d") != std::string::npos);

    Blob cut = idx_images();
    cut.resize(cut.size() - 7);
    dir.write("cut-idx3-ubyte", cut);
    m = input_error([&] { open_dataset(source({"cut-idx3-ubyte"}, {"y.idx"}), dir.path); });
    CHECK(m.find("cut-idx3-ubyte: byte 69: the file ends after 53 of its 60 data bytes (5 records of shape "
                 "[4, 3]") != std::string::npos);
    CHECK(m.find("truncated") != std::string::npos);
    dir.write("cut-idx3-ubyte.gz", gzip(cut));
    m = input_error([&] { open_dataset(source({"cut-idx3-ubyte.gz"}, {"y.idx"}), dir.path); });
    CHECK(m.find("cut-idx3-ubyte.gz: byte 69: the file ends after 53 of its 60 data bytes (decompressed)") !=
          std::string::npos);
    // A gzip stream cut short.
    Blob gz = gzip(idx_images());
    gz.resize(gz.size() / 2);
    dir.write("short-idx3-ubyte.gz", gz);
    m = input_error([&] { open_dataset(source({"short-idx3-ubyte.gz"}, {"y.idx"}), dir.path); });
    CHECK(m.find("short-idx3-ubyte.gz: byte") != std::string::npos);
    CHECK(m.find("the gzip stream ends early") != std::string::npos);
    // A header that ends early.
    dir.write("head-idx3-ubyte", Blob{0, 0, 8, 3, 0, 0, 0, 5});
    CHECK(input_error([&] {
            open_dataset(source({"head-idx3-ubyte"}, {"y.idx"}), dir.path);
          }).find("head-idx3-ubyte: byte 8: the file ends inside the header: 3 dimensions need 16 bytes") !=
          std::string::npos);
    // Labels for another dataset.
    dir.write("x-idx3-ubyte", idx_images());
    dir.write("y3-idx1-ubyte", idx(0x08, {3}, Blob{1, 2, 3}));
    CHECK(input_error([&] { open_dataset(source({"x-idx3-ubyte"}, {"y3-idx1-ubyte"}), dir.path); }) ==
          "spec.toml:7:3: x-idx3-ubyte holds 5 samples, but y3-idx1-ubyte holds 3 labels | hint: the sample "
          "and "
          "label files must match one to one");
  }

  TEST_CASE("missing files and globs that match nothing are errors at the spec's position") {
    TempDir dir;
    dir.write("train-images-idx3-ubyte.gz", gzip(idx_images()));
    std::string m =
        input_error([&] { open_dataset(source({"train-image-idx3-ubyte.gz"}, {"y.gz"}), dir.path); });
    CHECK(m.find("spec.toml:7:3: data file 'train-image-idx3-ubyte.gz' does not exist (looked for " +
                 dir.path) == 0);
    CHECK(m.find("did you mean 'train-images-idx3-ubyte.gz'?") != std::string::npos);
    CHECK(input_error([&] {
            open_dataset(source({"data_batch_*.bin"}), dir.path);
          }).find("spec.toml:7:3: no data file matches 'data_batch_*.bin'") == 0);
    CHECK(input_error([&] {
            open_dataset(source({"train-images-idx3-ubyte.gz"}, {}, "idz"), dir.path);
          }).find("unknown data format 'idz'") != std::string::npos);
    dir.write("notes.txt", Blob{'a'});
    CHECK(input_error([&] {
            open_dataset(source({"notes.txt"}), dir.path);
          }).find("cannot tell the format of 'notes.txt' from its name") != std::string::npos);
    CHECK(input_error([&] {
            open_dataset(source({"train-images-idx3-ubyte.gz"}), dir.path);
          }).find("idx samples need label files: y is missing") != std::string::npos);
  }

  TEST_CASE("CIFAR-10 batches: records in place, CHW, globs in natural order") {
    TempDir dir;
    auto batch = [](int first, int n) {
      Blob b;
      for (int r = 0; r < n; ++r) {
        b.push_back(static_cast<uint8_t>((first + r) % 10));
        for (int e = 0; e < 3072; ++e) b.push_back(static_cast<uint8_t>((first + r + e) & 0xff));
      }
      return b;
    };
    dir.write("data_batch_1.bin", batch(0, 3));
    dir.write("data_batch_2.bin", batch(3, 2));
    dir.write("data_batch_10.bin", batch(5, 4));
    auto d = open_dataset(source({"data_batch_*.bin"}), dir.path);
    REQUIRE(d->size() == 9);
    CHECK(d->sample_shape() == Shape{3, 32, 32});
    CHECK(d->layout() == Layout::chw);
    CHECK(d->describe() == "data_batch_1.bin .. data_batch_10.bin (3 files)");
    for (int i = 0; i < 9; ++i) {
      CHECK(label(*d, i) == i % 10);
      auto s = sample<uint8_t>(*d, i);
      CHECK(s[0] == i);
      CHECK(s[3071] == ((i + 3071) & 0xff));
    }
    CHECK(d->locate(6) == "data_batch_10.bin: sample 1");

    Blob bad = batch(0, 2);
    bad.resize(bad.size() - 100);
    dir.write("test_batch.bin", bad);
    std::string m = input_error([&] { open_dataset(source({"test_batch.bin"}), dir.path); });
    CHECK(m.find("test_batch.bin: the size 6046 bytes is not a multiple of 3073") == 0);
    CHECK(m.find("1 whole records and 2973 bytes more") != std::string::npos);
  }

  TEST_CASE("the loader names the file and sample of a label out of range") {
    TempDir dir;
    Blob b;
    for (int r = 0; r < 4; ++r) {
      b.push_back(r == 2 ? 12 : 1);
      b.insert(b.end(), 3072, 0);
    }
    dir.write("data_batch_1.bin", b);
    auto d = open_dataset(source({"data_batch_1.bin"}), dir.path);
    engine::data::BatchFormat f;
    f.num_classes = 10;
    engine::data::BatchLoader loader(d, 4, f, true, 1);
    loader.start_epoch(0);
    engine::data::Batch batch;
    CHECK(input_error([&] { loader.next(&batch); }) ==
          "data_batch_1.bin: sample 2: label 12 is out of range for 10 classes | hint: the model's output "
          "has 10 classes: labels must lie in [0, 9]; a void label for the loss to skip takes loss = "
          "\"SparseCategoricalCrossentropy(ignore_class=12)\"");
    // A loss's ignore_class is a label the loader lets through.
    f.ignore_class = 12;
    engine::data::BatchLoader skipping(d, 4, f, true, 1);
    skipping.start_epoch(0);
    REQUIRE(skipping.next(&batch));
    const auto* labels = static_cast<const int64_t*>(batch.y);
    CHECK(std::count(labels, labels + batch.size, 12) == 1);
  }

  TEST_CASE("NPY: every supported dtype, header versions 1-3, HWC images") {
    TempDir dir;
    Blob u8{0, 1, 2, 3, 4, 5}, i32, i64, f32, f64;
    for (int k = 0; k < 6; ++k) {
      put_raw<int32_t>(i32, -k);
      put_raw<int64_t>(i64, int64_t{1} << (40 + k));
      put_raw<float>(f32, 0.5f * k);
      put_raw<double>(f64, 0.25 * k);
    }
    dir.write("u8.npy", npy("|u1", {3, 2}, u8));
    dir.write("b1.npy", npy("|b1", {3, 2}, Blob{1, 0, 0, 1, 1, 1}, 2));
    dir.write("i4.npy", npy("<i4", {3, 2}, i32, 3));
    dir.write("i8.npy", npy("<i8", {3, 2}, i64));
    dir.write("f4.npy", npy("<f4", {3, 2}, f32));
    dir.write("f8.npy", npy("<f8", {3, 2}, f64));
    Blob y;
    for (int64_t v : {2, 0, 1}) put_raw<int64_t>(y, v);
    dir.write("y.npy", npy("<i8", {3}, y));

    auto d = open_dataset(source({"u8.npy"}, {"y.npy"}), dir.path);
    CHECK(d->sample_shape() == Shape{2});
    CHECK(sample<uint8_t>(*d, 2) == std::vector<uint8_t>{4, 5});
    CHECK(label(*d, 0) == 2);
    CHECK(d->label_dtype() == DType::i64);
    CHECK(sample<uint8_t>(*open_dataset(source({"b1.npy"}, {"y.npy"}), dir.path), 0) ==
          std::vector<uint8_t>{1, 0});
    CHECK(sample<int32_t>(*open_dataset(source({"i4.npy"}, {"y.npy"}), dir.path), 1) ==
          std::vector<int32_t>{-2, -3});
    CHECK(sample<int64_t>(*open_dataset(source({"i8.npy"}, {"y.npy"}), dir.path), 2) ==
          std::vector<int64_t>{int64_t{1} << 44, int64_t{1} << 45});
    CHECK(sample<float>(*open_dataset(source({"f4.npy"}, {"y.npy"}), dir.path), 1) ==
          std::vector<float>{1.0f, 1.5f});
    CHECK(sample<double>(*open_dataset(source({"f8.npy"}, {"y.npy"}), dir.path), 2) ==
          std::vector<double>{1.0, 1.25});
    // The label file may be any integer dtype: u8 labels from i4.
    Blob yl;
    for (int32_t v : {5, 6, 7}) put_raw<int32_t>(yl, v);
    dir.write("y4.npy", npy("<i4", {3}, yl));
    CHECK(label(*open_dataset(source({"u8.npy"}, {"y4.npy"}), dir.path), 2) == 7);
    // Several x and y files concatenate; a gzipped .npy works too.
    dir.write("u8b.npy.gz", gzip(npy("|u1", {1, 2}, Blob{9, 8})));
    dir.write("y1.npy", npy("<i8", {1}, Blob{3, 0, 0, 0, 0, 0, 0, 0}));
    auto cat = open_dataset(source({"u8.npy", "u8b.npy.gz"}, {"y.npy", "y1.npy"}), dir.path);
    CHECK(cat->size() == 4);
    CHECK(sample<uint8_t>(*cat, 3) == std::vector<uint8_t>{9, 8});
    CHECK(label(*cat, 3) == 3);
    // Rank-3 samples are Keras-style HWC images; one-hot labels keep their vector shape.
    dir.write("img.npy", npy("|u1", {1, 2, 2, 3}, Blob(12, 7)));
    Blob onehot;
    for (float v : {0.f, 1.f, 0.f}) put_raw<float>(onehot, v);
    dir.write("onehot.npy", npy("<f4", {1, 3}, onehot));
    auto img = open_dataset(source({"img.npy"}, {"onehot.npy"}), dir.path);
    CHECK(img->layout() == Layout::hwc);
    CHECK(img->sample_shape() == Shape{2, 2, 3});
    CHECK(img->label_shape() == Shape{3});
    CHECK(img->label_dtype() == DType::f32);
  }

  TEST_CASE("NPY errors: Fortran order, big-endian, objects, unsupported dtypes, truncation") {
    TempDir dir;
    dir.write("y.npy", npy("<i8", {2}, Blob(16, 0)));
    dir.write("fortran.npy", npy("<f4", {2, 2}, Blob(16, 0), 1, true));
    std::string m = input_error([&] { open_dataset(source({"fortran.npy"}, {"y.npy"}), dir.path); });
    CHECK(m.find("fortran.npy: the array is in Fortran (column-major) order") == 0);
    CHECK(m.find("numpy.ascontiguousarray") != std::string::npos);
    dir.write("big.npy", npy(">f4", {2, 2}, Blob(16, 0)));
    CHECK(input_error([&] {
            open_dataset(source({"big.npy"}, {"y.npy"}), dir.path);
          }).find("big.npy: the array is big-endian ('>f4')") == 0);
    dir.write("obj.npy", npy("|O", {2}, Blob(16, 0)));
    CHECK(input_error([&] {
            open_dataset(source({"obj.npy"}, {"y.npy"}), dir.path);
          }).find("pad_sequences") != std::string::npos);
    dir.write("f2.npy", npy("<f2", {2, 2}, Blob(8, 0)));
    CHECK(input_error([&] {
            open_dataset(source({"f2.npy"}, {"y.npy"}), dir.path);
          }).find("dtype '<f2' is not supported") != std::string::npos);
    Blob cut = npy("<f4", {2, 2}, Blob(16, 0));
    cut.resize(cut.size() - 5);
    dir.write("cut.npy", cut);
    CHECK(input_error([&] { open_dataset(source({"cut.npy"}, {"y.npy"}), dir.path); }) ==
          "cut.npy: byte 139: the file ends after 11 of its 16 data bytes (shape [2, 2], <f4) | hint: the "
          "file is "
          "truncated: write it again");
    dir.write("not.npy", Blob{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'});
    CHECK(input_error([&] {
            open_dataset(source({"not.npy"}, {"y.npy"}), dir.path);
          }).find("not.npy: byte 0: not an NPY file") == 0);
  }

  TEST_CASE("NPZ: stored and deflated members, keys, a missing key") {
    TempDir dir;
    Blob x;
    for (int k = 0; k < 8; ++k) put_raw<float>(x, static_cast<float>(k));
    Blob y;
    for (int64_t v : {1, 0, 1, 1}) put_raw<int64_t>(y, v);
    const Blob xn = npy("<f4", {4, 2}, x), yn = npy("<i8", {4}, y);
    dir.write("stored.npz", zip({{"x.npy", xn, false}, {"y.npy", yn, false}}));
    dir.write("deflated.npz", zip({{"x_train.npy", xn, true}, {"y_train.npy", yn, true}}));
    for (const char* f : {"stored.npz", "deflated.npz"}) {
      DataSource s = source({f});
      if (std::string(f) == "deflated.npz") {
        s.x_key = "x_train";
        s.y_key = "y_train";
      }
      auto d = open_dataset(s, dir.path);
      REQUIRE(d->size() == 4);
      CHECK(sample<float>(*d, 3) == std::vector<float>{6.0f, 7.0f});
      CHECK(label(*d, 1) == 0);
      CHECK(label(*d, 3) == 1);
    }
    DataSource s = source({"deflated.npz"});
    s.x_key = "x_trian";
    s.y_key = "y_train";
    CHECK(
        input_error([&] { open_dataset(s, dir.path); }) ==
        "deflated.npz: has no array 'x_trian'; its arrays: x_train, y_train | hint: did you mean 'x_train'?");
    // Labels missing from an archive of x alone: 'x' is no typo of 'y'.
    dir.write("x_only.npz", zip({{"x.npy", xn, false}}));
    CHECK(
        input_error([&] { open_dataset(source({"x_only.npz"}), dir.path); }) ==
        "x_only.npz: has no array 'y'; its arrays: x | hint: set x_key / y_key to the archive's array names");
    // A damaged deflated member fails its CRC or its inflation.
    Blob z = zip({{"x.npy", xn, true}, {"y.npy", yn, false}});
    z[40] ^= 0x55;
    dir.write("damaged.npz", z);
    CHECK(input_error([&] { open_dataset(source({"damaged.npz"}), dir.path); }).find("damaged.npz/x.npy") ==
          0);
    // A stored member is used in place, after its CRC: a flipped bit in its numbers is not read as data.
    Blob st = zip({{"x.npy", xn, false}, {"y.npy", yn, false}});
    st[30 + 5 + xn.size() - 1] ^= 0x01;
    dir.write("flipped.npz", st);
    const std::string flipped = input_error([&] { open_dataset(source({"flipped.npz"}), dir.path); });
    CHECK(flipped.find("flipped.npz/x.npy: CRC-32 ") == 0);
    CHECK(flipped.find("hint: the archive is damaged") != std::string::npos);
    dir.write("plain.npz", xn);
    CHECK(input_error([&] { open_dataset(source({"plain.npz"}), dir.path); }).find("this is an .npy file") !=
          std::string::npos);
  }

  TEST_CASE("CSV: header, label column by name, index or last; integer or float labels") {
    TempDir dir;
    dir.write_text("h.csv", "a,label,\"b, c\"\n1,2,3\r\n4.5,0,-6e-1\n\n7,1, 8 \n");
    DataSource s = source({"h.csv"});
    s.label_column = "label";
    auto d = open_dataset(s, dir.path);
    REQUIRE(d->size() == 3);
    CHECK(d->sample_shape() == Shape{2});
    CHECK(d->sample_dtype() == DType::f32);
    CHECK(sample<float>(*d, 1) == std::vector<float>{4.5f, -0.6f});
    CHECK(sample<float>(*d, 2) == std::vector<float>{7.0f, 8.0f});
    CHECK(d->label_dtype() == DType::i64);
    CHECK(label(*d, 0) == 2);
    CHECK(label(*d, 2) == 1);
    CHECK(d->locate(2) == "h.csv:5: sample 2");
    s.label_column = "1";
    CHECK(label(*open_dataset(s, dir.path), 1) == 0);
    s.label_column = "";  // the last column, fractional: regression targets
    auto last = open_dataset(s, dir.path);
    CHECK(last->label_dtype() == DType::f32);
    CHECK(sample<float>(*last, 0) == std::vector<float>{1.0f, 2.0f});
    s.label_column = "lable";
    CHECK(
        input_error([&] { open_dataset(s, dir.path); }) ==
        "h.csv:1: no column is named 'lable'; the header has: a, label, b, c | hint: did you mean 'label'?");

    // Quotes inside a quoted name are doubled.
    dir.write_text("q.csv", "\"say \"\"hi\"\"\",y\n5,0\n");
    DataSource q = source({"q.csv"});
    q.label_column = "say \"hi\"";
    auto dq = open_dataset(q, dir.path);
    CHECK(label(*dq, 0) == 5);
    CHECK(sample<float>(*dq, 0) == std::vector<float>{0.0f});

    dir.write_text("n.csv", "1,2,0\n3,4,1\n");
    DataSource nh = source({"n.csv"});
    nh.header = false;
    auto d2 = open_dataset(nh, dir.path);
    CHECK(d2->size() == 2);
    CHECK(label(*d2, 1) == 1);
  }

  TEST_CASE("CSV errors: a ragged row names its line, a bad cell its line and column") {
    TempDir dir;
    dir.write_text("ragged.csv", "x1,x2,y\n1,2,0\n\n3,4,5,1\n");
    CHECK(input_error([&] { open_dataset(source({"ragged.csv"}), dir.path); }) ==
          "ragged.csv:4: the row has 4 fields, but the header on line 1 has 3 | hint: every row needs the "
          "same number "
          "of comma-separated fields");
    dir.write_text("cell.csv", "x1,x2,y\n1,2,0\n3, abc,1\n");
    CHECK(input_error([&] { open_dataset(source({"cell.csv"}), dir.path); }) ==
          "cell.csv:3:4: column 'x2' holds 'abc', not a number | hint: CSV data holds numbers only: encode "
          "text "
          "as numbers first");
    dir.write_text("headerless.csv", "x1,x2,y\n1,2,0\n");
    DataSource nh = source({"headerless.csv"});
    nh.header = false;
    CHECK(input_error([&] { open_dataset(nh, dir.path); }) ==
          "headerless.csv:1:1: column 0 holds 'x1', not a number | hint: is this row a header? set header = "
          "true");
  }

  TEST_CASE("Fashion-MNIST: the real files") {
    const std::string dir = "/usr/share/datasets/fashion-mnist";
    if (!std::filesystem::exists(dir + "/train-images-idx3-ubyte.gz")) {
      MESSAGE("Fashion-MNIST is not installed (dataset-fashion-mnist): skipped");
      return;
    }
    auto train = open_dataset(source({"train-images-idx3-ubyte.gz"}, {"train-labels-idx1-ubyte.gz"}), dir);
    auto test = open_dataset(source({"t10k-images-*.gz"}, {"t10k-labels-*.gz"}), dir);
    REQUIRE(train->size() == 60000);
    REQUIRE(test->size() == 10000);
    CHECK(train->sample_shape() == Shape{28, 28});
    std::vector<int64_t> first, first_test;
    for (int i = 0; i < 10; ++i) {
      first.push_back(label(*train, i));
      first_test.push_back(label(*test, i));
    }
    CHECK(first == std::vector<int64_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5});
    CHECK(first_test == std::vector<int64_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7});
    auto px = sample<uint8_t>(*train, 0);
    int64_t sum = 0;
    for (uint8_t v : px) sum += v;
    CHECK(sum == 76247);
    // The same through an unlinked temporary file, as a dataset larger than memory would be decompressed.
    DatasetOptions spill;
    spill.spill_bytes = int64_t{1} << 20;
    auto spilled =
        open_dataset(source({"t10k-images-idx3-ubyte.gz"}, {"t10k-labels-idx1-ubyte.gz"}), dir, spill);
    for (int64_t i : {0, 4321, 9999}) {
      CHECK(sample<uint8_t>(*spilled, i) == sample<uint8_t>(*test, i));
      CHECK(label(*spilled, i) == label(*test, i));
    }

    // An epoch of batches of 64, scaled, through the loader: far faster than a training epoch takes.
    engine::data::BatchFormat f;
    f.scale = 1.0 / 255;
    f.num_classes = 10;
    f.to_chw = true;
    engine::data::BatchLoader loader(train, 64, f, true, 1);
    CHECK(loader.x_shape(64) == Shape{64, 1, 28, 28});
    for (int epoch = 0; epoch < 2; ++epoch) {
      auto t0 = std::chrono::steady_clock::now();
      loader.start_epoch(epoch);
      engine::data::Batch b;
      int64_t n = 0, batches = 0;
      double total = 0;
      while (loader.next(&b)) {
        n += b.size;
        ++batches;
        total += static_cast<const float*>(b.x)[0];
      }
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      MESSAGE("Fashion-MNIST epoch " << epoch << " of batches of 64 through the loader: " << s * 1e3
                                     << " ms");
      CHECK(n == 60000);
      CHECK(batches == 938);
      CHECK(s < 5.0);
    }
  }
}

TEST_SUITE("datasets") {
  TEST_CASE("text: Keras's standardization and split, ids by frequency, padding and truncating sides") {
    using V = std::vector<std::string>;
    CHECK(text_words("Don't STOP, me-now!  Naïve\tÉCOLE\n", "lower_and_strip_punctuation") ==
          V{"dont", "stop", "menow", "naïve", "école"});
    CHECK(text_words("Don't STOP", "lower") == V{"don't", "stop"});
    CHECK(text_words("Don't STOP", "strip_punctuation") == V{"Dont", "STOP"});
    CHECK(text_words("a\xff b", "none") == V{"a\xEF\xBF\xBD", "b"});  // not UTF-8: U+FFFD
    CHECK(text_words(" \t\n", "none").empty());

    TextSpec spec;
    spec.output_sequence_length = 4;
    spec.max_tokens = 5;  // 0, 1 and three words
    // "b" 3 times, "a" and "c" twice (c before a: Keras breaks ties in reverse byte order), "d" once: cut by
    // max_tokens; "[UNK]" is never a word of the vocabulary.
    const V vocab = adapt_vocabulary({"b a c", "c b d", "b a"}, spec);
    CHECK(vocab == V{"b", "c", "a"});
    spec.max_tokens = 0;
    spec.standardize = "none";
    CHECK(adapt_vocabulary({"b a c", "c b d", "b a [UNK] [UNK] [UNK] [UNK]"}, spec) == V{"b", "c", "a", "d"});
    spec.standardize = "lower_and_strip_punctuation";
    spec.vocabulary = vocab;
    auto ids = [&](const std::string& text, const std::string& padding, const std::string& truncating) {
      TextSpec s = spec;
      s.padding = padding;
      s.truncating = truncating;
      std::vector<int32_t> out(4, -1);
      TextVectorizer(s).encode(text, out.data());
      return out;
    };
    using I = std::vector<int32_t>;
    CHECK(ids("A b", "post", "post") == I{4, 2, 0, 0});
    CHECK(ids("A b", "pre", "post") == I{0, 0, 4, 2});
    CHECK(ids("a b c zzz e", "post", "post") == I{4, 2, 3, 1});  // the first four; zzz unknown
    CHECK(ids("a b c zzz e", "post", "pre") == I{2, 3, 1, 1});   // the last four
    CHECK(ids("", "pre", "pre") == I{0, 0, 0, 0});
  }

  TEST_CASE("text: folders of class folders, labelled by class, mixed by a hash of their names") {
    TempDir dir;
    std::filesystem::create_directories(dir.path + "/train/neg");
    std::filesystem::create_directories(dir.path + "/train/pos");
    std::filesystem::create_directories(dir.path + "/train/unsup");
    for (int i = 0; i < 6; ++i) {
      dir.write_text("train/neg/" + std::to_string(i) + ".txt", "bad awful " + std::to_string(i));
      dir.write_text("train/pos/" + std::to_string(i) + ".txt", "good great " + std::to_string(i));
    }
    dir.write_text("train/pos/readme.md", "not a sample");
    dir.write_text("train/unsup/0.txt", "no label");
    DataSource src = source({"train"}, {}, "text");
    src.class_names = {"neg", "pos"};
    TextCorpus c = read_text_source(src, dir.path);
    REQUIRE(c.texts.size() == 12);
    CHECK(c.class_names == std::vector<std::string>{"neg", "pos"});
    int switches = 0;
    for (size_t i = 0; i < c.texts.size(); ++i) {
      CHECK(c.texts[i].starts_with(c.labels[i] == 0 ? "bad awful" : "good great"));
      CHECK(c.files[i].find(c.labels[i] == 0 ? "/neg/" : "/pos/") != std::string::npos);
      if (i > 0 && c.labels[i] != c.labels[i - 1]) ++switches;
    }
    CHECK(switches >= 3);                                     // not class by class
    CHECK(read_text_source(src, dir.path).files == c.files);  // the same order every time
    src.limit = 5;
    TextCorpus first = read_text_source(src, dir.path);
    CHECK(first.files == std::vector<std::string>(c.files.begin(), c.files.begin() + 5));

    // Without class_names, every class folder in sorted order.
    DataSource all = source({"train"}, {}, "text");
    CHECK(read_text_source(all, dir.path).class_names == std::vector<std::string>{"neg", "pos", "unsup"});

    // As a dataset: int32 ids per text, int64 labels, samples located by file.
    TextSpec spec;
    spec.output_sequence_length = 3;
    spec.vocabulary = adapt_vocabulary(c.texts, spec);
    DatasetOptions options;
    options.text = &spec;
    src.limit = 0;
    auto d = open_dataset(src, dir.path, options);
    REQUIRE(d->size() == 12);
    CHECK(d->sample_dtype() == DType::i32);
    CHECK(d->sample_shape() == Shape{3});
    CHECK(d->label_dtype() == DType::i64);
    TextVectorizer v(spec);
    for (int64_t i = 0; i < 12; ++i) {
      std::vector<int32_t> want(3);
      v.encode(c.texts[static_cast<size_t>(i)], want.data());
      CHECK(sample<int32_t>(*d, i) == want);
      int64_t label = -1;
      d->read_label(i, &label);
      CHECK(label == c.labels[static_cast<size_t>(i)]);
      CHECK(d->locate(i).find(c.files[static_cast<size_t>(i)]) != std::string::npos);
    }

    // Errors name the source's place, what is missing, and a hint.
    src.class_names = {"neg", "positive"};
    CHECK(input_error([&] {
            read_text_source(src, dir.path);
          }).find("spec.toml:7:3: text data: " + dir.path + "/train has no class folder 'positive'") == 0);
    std::filesystem::create_directories(dir.path + "/train/empty");
    src.class_names = {"neg", "empty"};
    CHECK(input_error([&] { read_text_source(src, dir.path); }).find("holds no .txt files") !=
          std::string::npos);
    CHECK(input_error([&] {
            read_text_source(source({"nowhere"}, {}, "text"), dir.path);
          }).find("text data: 'nowhere' is not a folder") != std::string::npos);
    src.class_names = {"neg", "pos"};
    CHECK(input_error([&] {
            open_dataset(src, dir.path);
          }).find("text data needs [data.text] and its vocabulary") != std::string::npos);
  }
}

TEST_SUITE("datasets") {
  TEST_CASE("predict's CSV rows: shortest exact floats, and nan whatever its sign bit") {
    TempDir dir;
    const std::string path = dir.path + "/rows.csv";
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(fd >= 0);
    {
      RowWriter w(fd, path, RowFormat::csv, DType::f32, 2, -1);
      const float values[] = {1.5f, std::numeric_limits<float>::quiet_NaN(),
                              -std::numeric_limits<float>::quiet_NaN(),
                              -std::numeric_limits<float>::infinity()};
      CHECK(w.write(values, 2));
      CHECK(w.finish());
    }
    ::close(fd);
    std::ifstream in(path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(text == "1.5,nan\nnan,-inf\n");
  }
}

namespace {

// A PNG of `channels` (1, 2, 3 or 4) written by libpng's simplified API.
void write_png(const std::string& path, int64_t h, int64_t w, int channels,
               const std::vector<uint8_t>& pixels) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(w);
  png.height = static_cast<png_uint_32>(h);
  png.format = channels == 1   ? PNG_FORMAT_GRAY
               : channels == 2 ? PNG_FORMAT_GA
               : channels == 3 ? PNG_FORMAT_RGB
                               : PNG_FORMAT_RGBA;
  REQUIRE(png_image_write_to_file(&png, path.c_str(), 0, pixels.data(), 0, nullptr));
}

// A JPEG of quality 100 (RGB or grey) written by libjpeg.
void write_jpeg(const std::string& path, int64_t h, int64_t w, int channels,
                const std::vector<uint8_t>& pixels) {
  jpeg_compress_struct c{};
  jpeg_error_mgr err{};
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f);
  jpeg_stdio_dest(&c, f);
  c.image_width = static_cast<JDIMENSION>(w);
  c.image_height = static_cast<JDIMENSION>(h);
  c.input_components = channels;
  c.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 100, TRUE);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(pixels.data() + c.next_scanline * w * channels);
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  std::fclose(f);
}

std::vector<uint8_t> gradient(int64_t h, int64_t w, int channels) {
  std::vector<uint8_t> p(static_cast<size_t>(h * w * channels));
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int c = 0; c < channels; ++c)
        p[static_cast<size_t>((y * w + x) * channels + c)] =
            static_cast<uint8_t>((y * 37 + x * 11 + c * 60) % 256);
  return p;
}

}  // namespace

namespace {

void put16(Blob& b, size_t at, uint32_t v) {
  for (int k = 0; k < 2; ++k) b[at + k] = static_cast<uint8_t>(v >> (8 * k));
}
void put32(Blob& b, size_t at, uint32_t v) {
  for (int k = 0; k < 4; ++k) b[at + k] = static_cast<uint8_t>(v >> (8 * k));
}

// A BMP with a header of `header` bytes (12: OS/2 core; 40: info, its bit masks after it; 108: version 4, the
// masks inside), `table` the colour table's raw bytes, and `rows` the rows as stored (each padded here).
Blob bmp(int header, int32_t w, int32_t h, int bits, uint32_t compression, const std::vector<uint32_t>& masks,
         const Blob& table, const std::vector<Blob>& rows, uint32_t colours_used = 0) {
  const size_t after_header = header == 40 ? 4 * masks.size() : 0;
  const size_t pixels_at = 14 + static_cast<size_t>(header) + after_header + table.size();
  const size_t stride = (static_cast<size_t>(bits) * static_cast<size_t>(w) + 31) / 32 * 4;
  Blob b(pixels_at + stride * rows.size(), 0);
  b[0] = 'B', b[1] = 'M';
  put32(b, 2, static_cast<uint32_t>(b.size()));
  put32(b, 10, static_cast<uint32_t>(pixels_at));
  put32(b, 14, static_cast<uint32_t>(header));
  if (header == 12) {
    put16(b, 18, static_cast<uint32_t>(w)), put16(b, 20, static_cast<uint32_t>(h)), put16(b, 22, 1);
    put16(b, 24, static_cast<uint32_t>(bits));
  } else {
    put32(b, 18, static_cast<uint32_t>(w)), put32(b, 22, static_cast<uint32_t>(h)), put16(b, 26, 1);
    put16(b, 28, static_cast<uint32_t>(bits)), put32(b, 30, compression), put32(b, 46, colours_used);
    for (size_t k = 0; k < masks.size(); ++k) put32(b, 54 + 4 * k, masks[k]);
  }
  std::copy(table.begin(), table.end(), b.begin() + static_cast<std::ptrdiff_t>(pixels_at - table.size()));
  for (size_t r = 0; r < rows.size(); ++r)
    std::copy(rows[r].begin(), rows[r].end(),
              b.begin() + static_cast<std::ptrdiff_t>(pixels_at + r * stride));
  return b;
}

}  // namespace

TEST_SUITE("datasets") {
  TEST_CASE("images: BMP of every bit depth and header, read as Pillow reads them") {
    TempDir dir;
    auto pixels = [&](const Blob& file, int channels) {
      return decode_image(dir.write("x.bmp", file), channels).pixels;
    };
    // 24 bits, 3 x 2, bottom-up: BGR triples, the bottom row first.
    const std::vector<Blob> rows24 = {{1, 2, 3, 4, 5, 6, 7, 8, 9}, {11, 12, 13, 14, 15, 16, 17, 18, 19}};
    const Blob top_first = {13, 12, 11, 16, 15, 14, 19, 18, 17, 3, 2, 1, 6, 5, 4, 9, 8, 7};
    CHECK(pixels(bmp(40, 3, 2, 24, 0, {}, {}, rows24), 3) == top_first);
    // Top-down (negative height): the first row stored is the top one.
    CHECK(pixels(bmp(40, 3, -2, 24, 0, {}, {}, {rows24[1], rows24[0]}), 3) == top_first);
    Image sized = decode_image(dir.write("y.bmp", bmp(40, 3, -2, 24, 0, {}, {}, {rows24[1], rows24[0]})), 1);
    CHECK((sized.height == 2 && sized.width == 3));

    // 32 bits without bit fields: BGR and an unused byte (alpha comes out opaque); with version-4 bit fields
    // and an alpha mask, the alpha is read.
    CHECK(pixels(bmp(40, 1, 1, 32, 0, {}, {}, {{10, 20, 30, 0}}), 4) == Blob{30, 20, 10, 255});
    CHECK(pixels(bmp(108, 1, 1, 32, 3, {0xFF0000, 0xFF00, 0xFF, 0xFF000000}, {}, {{10, 20, 30, 40}}), 4) ==
          Blob{30, 20, 10, 40});
    CHECK(pixels(bmp(108, 1, 1, 32, 3, {0xFF, 0xFF00, 0xFF0000, 0}, {}, {{10, 20, 30, 40}}), 4) ==
          Blob{10, 20, 30, 255});

    // 16 bits: 5-5-5 without bit fields, 5-6-5 with them (masks after a 40-byte header); fields scale down
    // to 8 bits rounding down (3 of 31 is 24).
    CHECK(pixels(bmp(40, 3, 1, 16, 0, {}, {}, {{0xFF, 0x7F, 0x00, 0x7C, 0x63, 0x0C}}), 3) ==
          Blob{255, 255, 255, 255, 0, 0, 24, 24, 24});
    CHECK(pixels(bmp(40, 2, 1, 16, 3, {0xF800, 0x07E0, 0x001F}, {}, {{0xE0, 0x07, 0x1F, 0x00}}), 3) ==
          Blob{0, 255, 0, 0, 0, 255});

    // Colour tables: 4 bits under a core header (3-byte entries), 1 bit and 8 bits under an info header.
    const Blob table3 = {0, 0, 255, 0, 255, 0, 255, 0, 0};           // BGR: red, green, blue
    const Blob table4 = {0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0, 0};  // BGRX: red, green, blue
    CHECK(pixels(bmp(12, 3, 1, 4, 0, {}, table3, {{0x21, 0x00}}), 3) ==
          Blob{0, 0, 255, 0, 255, 0, 255, 0, 0});
    CHECK(pixels(bmp(40, 10, 1, 1, 0, {}, {0, 0, 0, 0, 255, 255, 255, 0}, {{0xA0, 0x40}}), 1) ==
          Blob{255, 0, 255, 0, 0, 0, 0, 0, 0, 255});
    CHECK(pixels(bmp(40, 2, 1, 8, 0, {}, table4, {{2, 1}}, 3), 3) == Blob{0, 0, 255, 0, 255, 0});

    // As Pillow reads them: an index past a short table is black; no masks at all at 32 bits are BGRA; bit
    // fields at 24 bits; a pixel offset at the header's end (the table left out of it) or 0 means the
    // pixels follow the table.
    CHECK(pixels(bmp(40, 2, 1, 8, 0, {}, table4, {{2, 5}}, 3), 3) == Blob{0, 0, 255, 0, 0, 0});
    CHECK(pixels(bmp(108, 1, 1, 32, 3, {0, 0, 0, 0}, {}, {{10, 20, 30, 40}}), 4) == Blob{30, 20, 10, 40});
    CHECK(pixels(bmp(40, 1, 1, 24, 3, {0xFF, 0xFF00, 0xFF0000}, {}, {{10, 20, 30}}), 3) == Blob{10, 20, 30});
    for (uint32_t offset : {uint32_t{54}, uint32_t{0}}) {
      Blob early = bmp(40, 2, 1, 8, 0, {}, table4, {{2, 1}}, 3);
      put32(early, 10, offset);
      CHECK(pixels(early, 3) == Blob{0, 0, 255, 0, 255, 0});
      // A 1-bit image that lists 256 colours: its pixels follow all of them.
      Blob table256(1024, 0);
      std::fill(table256.begin() + 4, table256.begin() + 7, uint8_t{255});  // colour 1 white
      Blob wide = bmp(40, 3, 1, 1, 0, {}, table256, {{0xA0}}, 256);
      put32(wide, 10, offset);
      CHECK(pixels(wide, 1) == Blob{255, 0, 255});
    }

    // Refused, naming the file: run-length compression, rows cut short.
    auto error = [&](const Blob& file) {
      return input_error([&] { decode_image(dir.write("x.bmp", file), 3); });
    };
    CHECK(error(bmp(40, 2, 1, 8, 1, {}, table4, {{2, 1}}, 3)).find("is a run-length compressed BMP") !=
          std::string::npos);
    Blob cut = bmp(40, 3, 2, 24, 0, {}, {}, rows24);
    cut.resize(cut.size() - 3);
    CHECK(error(cut).find("it holds 21 bytes of pixels where 2 rows of 12 bytes need 24") !=
          std::string::npos);
    CHECK(error(Blob{'B', 'M', 0, 0}).find("too short for its headers") != std::string::npos);
  }

  TEST_CASE("images: a GIF's first frame on its screen, transparent and uncovered pixels black and clear") {
    TempDir dir;
    const std::string path = dir.path + "/a.gif";
    int error = 0;
    GifFileType* gif = EGifOpenFileName(path.c_str(), false, &error);
    REQUIRE(gif);
    GifColorType colours[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {0, 0, 255}};
    ColorMapObject* map = GifMakeMapObject(4, colours);
    REQUIRE(EGifPutScreenDesc(gif, 4, 3, 2, 0, map) == GIF_OK);
    GraphicsControlBlock gcb{};
    gcb.TransparentColor = 3;
    GifByteType ext[4];
    const size_t n = EGifGCBToExtension(&gcb, ext);
    REQUIRE(EGifPutExtension(gif, GRAPHICS_EXT_FUNC_CODE, static_cast<int>(n), ext) == GIF_OK);
    // The first frame covers columns 1-2 of rows 1-2 of a 4 x 3 screen; colour 3 is transparent.
    REQUIRE(EGifPutImageDesc(gif, 1, 1, 2, 2, false, nullptr) == GIF_OK);
    GifPixelType first[2][2] = {{1, 2}, {3, 1}};
    for (auto& row : first) REQUIRE(EGifPutLine(gif, row, 2) == GIF_OK);
    // A second frame (an animation's next) is not read.
    REQUIRE(EGifPutImageDesc(gif, 0, 0, 4, 3, false, nullptr) == GIF_OK);
    GifPixelType second[4] = {2, 2, 2, 2};
    for (int r = 0; r < 3; ++r) REQUIRE(EGifPutLine(gif, second, 4) == GIF_OK);
    REQUIRE(EGifCloseFile(gif, &error) == GIF_OK);
    GifFreeMapObject(map);

    Image img = decode_image(path, 4);
    REQUIRE((img.height == 3 && img.width == 4));
    Blob want(4 * 3 * 4, 0);
    auto set = [&](int y, int x, Blob rgba) {
      std::copy(rgba.begin(), rgba.end(), want.begin() + (y * 4 + x) * 4);
    };
    set(1, 1, {255, 0, 0, 255});
    set(1, 2, {0, 255, 0, 255});
    set(2, 2, {255, 0, 0, 255});
    CHECK(img.pixels == want);
    CHECK(decode_image(path, 3).pixels.size() == 36);

    // A GIF cut short is an error naming the file.
    std::ifstream in(path, std::ios::binary);
    std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    dir.write_text("cut.gif", whole.substr(0, 30));
    CHECK(input_error([&] {
            decode_image(dir.path + "/cut.gif", 3);
          }).find("cut.gif: GIF image cannot be decoded") != std::string::npos);
  }

  TEST_CASE(
      "images: PNG and JPEG decoded to the input's channels, resized as Keras resizes, labelled by folder") {
    TempDir dir;
    for (const char* cls : {"cat", "dog"}) std::filesystem::create_directories(dir.path + "/train/" + cls);
    // A PNG of each kind at the input's size is read exactly: RGB as it is, RGBA without its alpha, grey
    // spread to three channels, grey and alpha likewise.
    const std::vector<uint8_t> rgb = gradient(4, 5, 3), rgba = gradient(4, 5, 4), grey = gradient(4, 5, 1),
                               ga = gradient(4, 5, 2);
    write_png(dir.path + "/train/cat/a.png", 4, 5, 3, rgb);
    write_png(dir.path + "/train/cat/b.PNG", 4, 5, 4, rgba);
    write_png(dir.path + "/train/dog/c.png", 4, 5, 1, grey);
    write_png(dir.path + "/train/dog/d.png", 4, 5, 2, ga);
    dir.write_text("train/dog/notes.txt", "not an image");  // left out
    DataSource src = source({"train"}, {}, "images");
    DatasetOptions options;
    options.image_shape = {4, 5, 3};
    auto d = open_dataset(src, dir.path, options);
    REQUIRE(d->size() == 4);
    CHECK(d->sample_dtype() == DType::u8);
    CHECK(d->sample_shape() == Shape{4, 5, 3});
    CHECK(d->layout() == Layout::hwc);
    std::map<std::string, std::vector<uint8_t>> want;
    want["a.png"] = rgb;
    for (const auto& [name, from, n] :
         {std::tuple{"b.PNG", &rgba, 4}, {"c.png", &grey, 1}, {"d.png", &ga, 2}}) {
      std::vector<uint8_t> w;
      for (int64_t p = 0; p < 20; ++p)
        for (int c = 0; c < 3; ++c) w.push_back((*from)[static_cast<size_t>(p * n + (n >= 3 ? c : 0))]);
      want[name] = w;
    }
    for (int64_t i = 0; i < 4; ++i) {
      const std::string where = d->locate(i);
      CAPTURE(where);
      const std::string file = where.substr(where.find_last_of('/') + 1,
                                            where.find(".png") != std::string::npos
                                                ? where.find(".png") + 4 - where.find_last_of('/') - 1
                                                : where.find(".PNG") + 4 - where.find_last_of('/') - 1);
      REQUIRE(want.count(file));
      CHECK(sample<uint8_t>(*d, i) == want[file]);
      CHECK(label(*d, i) == (file == "a.png" || file == "b.PNG" ? 0 : 1));
    }

    // Resized to 3 x 7 with half-pixel centres: each value between its two neighbours on each axis.
    Image img = decode_image(dir.path + "/train/cat/a.png", 3);
    std::vector<uint8_t> out(3 * 7 * 3);
    resize_image(img, 3, 7, out.data());
    auto at = [&](double y, double x, int c) {
      y = std::clamp(y, 0.0, 3.0), x = std::clamp(x, 0.0, 4.0);
      const auto y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x);
      const int64_t y1 = std::min<int64_t>(y0 + 1, 3), x1 = std::min<int64_t>(x0 + 1, 4);
      auto p = [&](int64_t r, int64_t q) {
        return static_cast<double>(rgb[static_cast<size_t>((r * 5 + q) * 3 + c)]);
      };
      const double ty = y - static_cast<double>(y0), tx = x - static_cast<double>(x0);
      return (p(y0, x0) * (1 - tx) + p(y0, x1) * tx) * (1 - ty) +
             (p(y1, x0) * (1 - tx) + p(y1, x1) * tx) * ty;
    };
    for (int64_t y = 0; y < 3; ++y)
      for (int64_t x = 0; x < 7; ++x)
        for (int c = 0; c < 3; ++c)
          CHECK(std::abs(out[static_cast<size_t>((y * 7 + x) * 3 + c)] -
                         at((y + 0.5) * 4 / 3 - 0.5, (x + 0.5) * 5 / 7 - 0.5, c)) <= 0.5 + 1e-9);  // rounded

    // Grey from colour by TensorFlow's weights; a JPEG (lossy) decodes close to what was written.
    Image g = decode_image(dir.path + "/train/cat/a.png", 1);
    for (int64_t p = 0; p < 20; ++p)
      CHECK(g.pixels[static_cast<size_t>(p)] == std::lround(0.2989 * rgb[static_cast<size_t>(3 * p)] +
                                                            0.587 * rgb[static_cast<size_t>(3 * p + 1)] +
                                                            0.114 * rgb[static_cast<size_t>(3 * p + 2)]));
    const std::vector<uint8_t> smooth = [] {
      std::vector<uint8_t> p(16 * 16 * 3);
      for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<uint8_t>(60 + (i / 3 % 16) * 4 + (i / 48) * 3);
      return p;
    }();
    write_jpeg(dir.path + "/train/dog/e.jpg", 16, 16, 3, smooth);
    Image j = decode_image(dir.path + "/train/dog/e.jpg", 3);
    REQUIRE(j.pixels.size() == smooth.size());
    int worst = 0;
    for (size_t i = 0; i < smooth.size(); ++i)
      worst = std::max(worst, std::abs(int{j.pixels[i]} - int{smooth[i]}));
    CHECK(worst <= 3);

    // A JPEG cut short in its data is an error (libjpeg would fill the rest grey); a 16-bit PNG is scaled.
    {
      // A 64 x 64 picture whose compressed data is most of the file, cut in that data (past its header).
      write_jpeg(dir.path + "/whole.jpg", 64, 64, 3, gradient(64, 64, 3));
      std::ifstream in(dir.path + "/whole.jpg", std::ios::binary);
      std::string whole((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      REQUIRE(whole.size() > 2000);
      dir.write_text("cut.jpg", whole.substr(0, whole.size() * 2 / 3));
      CHECK(decode_image(dir.path + "/whole.jpg", 3).pixels.size() == 64 * 64 * 3);
    }
    CHECK(input_error([&] { decode_image(dir.path + "/cut.jpg", 3); }).find("JPEG image cannot be decoded") !=
          std::string::npos);
    {
      png_image png{};
      png.version = PNG_IMAGE_VERSION;
      png.width = 2;
      png.height = 1;
      png.format = PNG_FORMAT_GRAY | PNG_FORMAT_FLAG_LINEAR;  // 16 bits per sample
      png.flags = PNG_IMAGE_FLAG_16BIT_sRGB;                  // written as they are, not as linear light
      const uint16_t values[] = {32768, 65535};
      REQUIRE(png_image_write_to_file(&png, (dir.path + "/deep.png").c_str(), 0, values, 0, nullptr));
    }
    CHECK(decode_image(dir.path + "/deep.png", 1).pixels == std::vector<uint8_t>{128, 255});

    // Damaged or foreign files are errors naming the file.
    dir.write_text("train/dog/f.jpg", std::string("\xFF\xD8\xFF\xE0", 4) + "cut short");
    CHECK(input_error([&] {
            open_dataset(src, dir.path, options);
          }).find("f.jpg: JPEG image cannot be decoded") != std::string::npos);
    dir.write_text("train/dog/f.jpg", "RIFF\x10\0\0\0WEBPVP8 ");
    CHECK(input_error([&] {
            open_dataset(src, dir.path, options);
          }).find("f.jpg: is not a PNG, JPEG, BMP or GIF image") != std::string::npos);
    std::filesystem::remove(dir.path + "/train/dog/f.jpg");
    options.image_shape = {4, 5, 2};
    CHECK(input_error([&] { open_dataset(src, dir.path, options); })
              .find("image data needs a model input of [height, width, channels] with 1, 3 or 4 channels, "
                    "and the "
                    "input is [4, 5, 2]") != std::string::npos);
  }
}

namespace {

using trainer::formats::pickle::Ref;
using trainer::formats::pickle::Value;

Ref unpickle(const std::string& s) {
  return trainer::formats::pickle::load(
      trainer::formats::Bytes::from_vector(std::vector<uint8_t>(s.begin(), s.end())), "p.pkl");
}

std::string unpickle_error(const std::string& s) {
  return input_error([&] { unpickle(s); });
}

}  // namespace

TEST_SUITE("pickle") {
  TEST_CASE("values of the data-building opcodes") {
    using namespace std::string_literals;
    // (None, True, False, 5, -2, 4464, LONG1 -385, 1.5, b'ab', 'xy', [1, 2], {'k': ()}) at protocol 2.
    const Ref t = unpickle(
        "\x80\x02(N\x88\x89K\x05J\xfe\xff\xff\xffM\x70\x11\x8a\x02\x7f\xfeG\x3f\xf8\x00\x00\x00\x00\x00\x00"
        "C\x02"
        "ab\x8c\x02xy]q\x00(K\x01K\x02"
        "e}(\x8c\x01k)ut."s);
    REQUIRE(t->kind == Value::Kind::tuple);
    REQUIRE(t->items.size() == 12);
    CHECK(t->items[0]->kind == Value::Kind::none);
    CHECK(t->items[1]->boolean);
    CHECK(!t->items[2]->boolean);
    CHECK(t->items[3]->integer == 5);
    CHECK(t->items[4]->integer == -2);
    CHECK(t->items[5]->integer == 0x1170);
    CHECK(t->items[6]->integer == -385);
    CHECK(t->items[7]->real == 1.5);
    CHECK(t->items[8]->view() == "ab");
    CHECK(t->items[9]->kind == Value::Kind::text);
    // A list of integers alone holds them packed.
    CHECK(t->items[10]->items.empty());
    CHECK(t->items[10]->ints == std::vector<int64_t>{1, 2});
    REQUIRE(t->items[11]->find("k") != nullptr);
    CHECK(t->items[11]->find("k")->kind == Value::Kind::tuple);
    CHECK(t->items[11]->find("x") == nullptr);
    // Python 3's bytes at protocol 2: _codecs.encode('\xe9a', 'latin1') through GLOBAL, and its memo reused.
    const Ref b = unpickle(
        "\x80\x02"
        "c_codecs\nencode\nq\x00X\x03\x00\x00\x00\xc3\xa9"
        "aX\x06\x00\x00\x00latin1"
        "\x86Rq\x01h\x01\x86."s);
    REQUIRE(b->items.size() == 2);
    CHECK(b->items[0]->view() ==
          "\xe9"
          "a");
    CHECK(b->items[1].get() == b->items[0].get());
  }

  TEST_CASE("what a data file has no business doing is refused at its byte") {
    using namespace std::string_literals;
    CHECK(unpickle_error("\x80\x02"
                         "cos\nsystem\nX\x02\x00\x00\x00ls\x85R."s) ==
          "p.pkl: byte 2: the pickle calls os.system, which no data file needs | hint: trainer reads pickles "
          "of arrays, "
          "lists, "
          "dicts, numbers and strings, and runs nothing in them");
    CHECK(unpickle_error("\x80\x04\x8c\x08"
                         "builtins\x8c\x04"
                         "eval\x93."s)
              .find("calls builtins.eval") != std::string::npos);
    // A list placed in itself, or changed once placed in another: no such data exists.
    CHECK(unpickle_error("\x80\x02]q\x00h\x00"
                         "a."s)
              .find("puts a value inside itself") != std::string::npos);
    CHECK(unpickle_error("\x80\x02]q\x00]h\x00"
                         "a0h\x00K\x01"
                         "a."s)
              .find("APPEND changes a list already placed") != std::string::npos);
    // Nesting past 64 levels (a tuple of a tuple of ...), which a value's destruction would recurse through.
    std::string deep = "\x80\x02)"s;
    for (int i = 0; i < 70; ++i) deep += "\x85";
    CHECK(unpickle_error(deep + ".").find("nests values more than 64 deep") != std::string::npos);
    // Damage: a truncated opcode, an unknown one, an empty stack, a memo never stored, a mark never set.
    CHECK(unpickle_error("\x80\x02X\x09\x00\x00\x00"
                         "ab"s)
              .find("the pickle ends inside its opcode at byte 2") != std::string::npos);
    CHECK(unpickle_error("\x80\x02\xff."s).find("opcode 0xff") != std::string::npos);
    CHECK(unpickle_error("\x80\x02"
                         "a."s)
              .find("empty stack") != std::string::npos);
    CHECK(unpickle_error("\x80\x02h\x07."s).find("recalls memo 7") != std::string::npos);
    CHECK(unpickle_error("\x80\x02K\x01t."s).find("closes a mark it never set") != std::string::npos);
    CHECK(unpickle_error("\x80\x02K\x01K\x02."s).find("stops with other than one value") !=
          std::string::npos);
    CHECK(unpickle_error("\x80\x02K\x01"s).find("ends inside its opcode") != std::string::npos);
    CHECK(unpickle_error("\x80\x06N."s).find("protocol is 6") != std::string::npos);
    // BUILD of an object with itself as its state.
    CHECK(unpickle_error("\x80\x02"
                         "cnumpy\ndtype\n)R\x94h\x00"
                         "b."s)
              .find("sets the state of other than") != std::string::npos);
    // Small files that would take much time or memory: a memoized tuple of 1000 given to 3000 calls (3
    // million copies), a memoized string decoded over and over, and 4 million memo entries.
    std::string calls =
        "\x80\x02"
        "cnumpy\ndtype\nq\x00"
        "0("s +
        std::string(1000, 'N') +
        "tq\x01"
        "0";
    for (int i = 0; i < 3000; ++i) calls += "h\x00h\x01R0"s;
    CHECK(unpickle_error(calls + "N.").find("builds more than 2000000 values") != std::string::npos);
    std::string decodes =
        "\x80\x02"
        "c_codecs\nencode\nq\x00"
        "0X\xe8\x03\x00\x00"s +
        std::string(1000, 'a') +
        "X\x06\x00\x00\x00latin1\x86q\x01"
        "0"s;
    for (int i = 0; i < 10; ++i) decodes += "h\x00h\x01R0"s;
    CHECK(unpickle_error(decodes + "N.").find("decodes more bytes than it holds") != std::string::npos);
    CHECK(unpickle_error("\x80\x02N"s + std::string(4'000'001, '\x94') + ".")
              .find("keeps more than 4000000 values at once") != std::string::npos);
    // Python 3's empty bytes at protocol 2: bytes().
    const Ref empty = unpickle(
        "\x80\x02"
        "c__builtin__\nbytes\n)R."s);
    CHECK(empty->kind == Value::Kind::bytes);
    CHECK(empty->size == 0);
    // The byte of the opcode is named.
    CHECK(input_error([&] { unpickle("\x80\x02N\xfe."s); }).find("opcode 0xfe") != std::string::npos);
    try {
      unpickle("\x80\x02N\xfe."s);
    } catch (const InputError& e) {
      CHECK(e.where() == "p.pkl: byte 3");
    }
  }
}
