// Checkpoint files: the checksum and JSON pieces, round trips of every dtype, damage (flipped bytes,
// truncation, inconsistent entries) found and reported against the file, and crash-safe writing that never
// loses the old file.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "engine/util/error.h"
#include "formats/atomic_file.h"
#include "formats/checkpoint.h"
#include "formats/checkpoint_hash.h"
#include "formats/checkpoint_json.h"

using namespace trainer;
using namespace trainer::formats;
using trainer::engine::DType;
using trainer::engine::Shape;
using trainer::engine::Tensor;

namespace {

using Bytes = std::string;

struct TempDir {
  std::string path;
  TempDir() {
    std::string t = (std::filesystem::temp_directory_path() / "trainer-checkpoint-XXXXXX").string();
    REQUIRE(mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string file(const std::string& name) const { return path + "/" + name; }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const Bytes& b) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(b.data(), static_cast<long>(b.size()));
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::map<std::string, std::string> caller_metadata() {
  return {
      {"spec", "[model]\nname = \"mlp\"\n"}, {"plan_signature", "0123abcd"}, {"epoch", "2"}, {"step", "938"},
      {"cursor", "epoch=2 batch=0"},         {"rng", "seed=7 counter=938"}};
}

Tensor raw_tensor(DType dt, Shape shape, uint8_t first) {
  Tensor t(dt, std::move(shape));
  auto* p = static_cast<uint8_t*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(first + 37 * i);
  return t;
}

// Every dtype, with bit patterns that a conversion would change (NaN payloads, -0, infinities, subnormals).
Checkpoint sample_checkpoint() {
  Checkpoint c;
  c.metadata = caller_metadata();
  const float nan_payload = std::bit_cast<float>(0x7fc12345u);
  c.tensors = {
      {"dense/kernel", Tensor::from<float>({2, 3}, {1.5f, -0.0f, nan_payload, INFINITY, -INFINITY, 1e-45f})},
      {"dense/kernel/adam_m", Tensor::from<float>({2, 3}, {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f})},
      {"flag", Tensor::from<bool>({2}, {true, false})},
      {"w64", Tensor::from<double>({3}, {1.0 / 3.0, -0.0, std::numeric_limits<double>::denorm_min()})},
      {"half", raw_tensor(DType::f16, {3}, 11)},
      {"brain", raw_tensor(DType::bf16, {2, 1}, 200)},
      {"ids", Tensor::from<int32_t>({2}, {-1, 2147483647})},
      {"big", Tensor::from<int64_t>({2}, {std::numeric_limits<int64_t>::min(), 42})},
      {"bytes", Tensor::from<uint8_t>({3}, {0, 128, 255})},
      {"scalar", Tensor::scalar<double>(2.25)},
      {"iter", Tensor::scalar<int64_t>(938)},
      {"empty", Tensor(DType::f32, {0, 4})},
      {"empty_u8", Tensor(DType::u8, {3, 0})},
  };
  return c;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

// Builds a file the way checkpoint.h defines it, independently of the writer: `header` has the token CHECKSUM
// where the checksum value goes. Lets tests make files whose only fault is the one they mean to test.
// `prefix` is how the header spells "xxh64:".
Bytes seal(std::string header, const Bytes& payload, const std::string& prefix = "xxh64:") {
  const std::string token = "CHECKSUM";
  size_t at = header.find(token);
  if (at == std::string::npos) {  // a file with no checksum
    header.append((8 - header.size() % 8) % 8, ' ');
    Bytes file(8, '\0');
    for (int i = 0; i < 8; ++i) file[i] = static_cast<char>(header.size() >> (8 * i));
    return file + header + payload;
  }
  header.replace(at, token.size(),
                 prefix + "0000000000000000:" + hex64(xxh64(payload.data(), payload.size())));
  header.append((8 - header.size() % 8) % 8, ' ');
  Bytes file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>(header.size() >> (8 * i));
  file += header;
  std::string h = hex64(xxh64(file.data(), file.size()));
  file.replace(8 + at + prefix.size(), 16, h);
  return file + payload;
}

// Recomputes both digests of a file edited on purpose.
Bytes reseal(Bytes file) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{static_cast<uint8_t>(file[i])} << (8 * i);
  size_t at = file.find("\"checksum\":\"xxh64:");
  REQUIRE(at != std::string::npos);
  at += std::strlen("\"checksum\":\"xxh64:");
  file.replace(at + 17, 16, hex64(xxh64(file.data() + 8 + n, file.size() - 8 - n)));
  file.replace(at, 16, "0000000000000000");
  file.replace(at, 16, hex64(xxh64(file.data(), 8 + n)));
  return file;
}

std::string metadata_json(const std::string& version = "1") {
  return R"("__metadata__":{"format":"trainer-checkpoint","format_version":")" + version +
         R"(","producer":"trainer test","spec":"","plan_signature":"","epoch":"0","step":"0","cursor":"",)"
         R"("rng":"","checksum":"CHECKSUM"})";
}

// The InputError that reading `path` throws (a failed CHECK when there is none).
InputError read_error(const std::string& path, bool metadata_only = false) {
  try {
    if (metadata_only)
      read_checkpoint_metadata(path);
    else
      read_checkpoint(path);
  } catch (const InputError& e) {
    return e;
  }
  FAIL_CHECK("reading ", path, " succeeded");
  return InputError("", "");
}

}  // namespace

TEST_SUITE("checkpoint") {
  TEST_CASE("xxh64 matches the reference vectors, in any pieces") {
    auto h = [](const std::string& s, uint64_t seed = 0) { return xxh64(s.data(), s.size(), seed); };
    CHECK(h("") == 0xEF46DB3751D8E999ULL);
    CHECK(h("", 1) == 0xD5AFBA1336A3BE4BULL);
    CHECK(h("a") == 0xD24EC4F1A98C6E5BULL);
    CHECK(h("abc") == 0x44BC2CF5AD770999ULL);
    CHECK(h("asdf") == 0x415872F599CEA71EULL);
    CHECK(h("abc", 12345) == 0x01700E64F6F23509ULL);
    CHECK(h("Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1ULL);
    CHECK(h("The quick brown fox jumps over the lazy dog") == 0x0B242D361FDA71BCULL);
    CHECK(h(std::string(32, 'a')) == 0x856E843298F99AD7ULL);
    CHECK(h(std::string(64, 'b')) == 0xECBAF4BDF26B6349ULL);
    CHECK(hex64(0xAB) == "00000000000000ab");

    std::string data;
    for (int i = 0; i < 200; ++i) data += static_cast<char>(i * 7 + 3);
    for (size_t len : {0, 1, 31, 32, 33, 64, 100, 200}) {
      const uint64_t whole = h(data.substr(0, len), 99);
      for (size_t cut1 : {0, 1, 5, 31, 32, 40}) {
        for (size_t cut2 : {0, 3, 32, 65}) {
          if (cut1 > len || cut1 + cut2 > len) continue;
          Xxh64 s(99);
          s.update(data.data(), cut1);
          s.update(data.data() + cut1, cut2);
          CHECK(s.digest() == h(data.substr(0, cut1 + cut2), 99));
          s.update(data.data() + cut1 + cut2, len - cut1 - cut2);
          CHECK(s.digest() == whole);
        }
      }
    }
  }

  TEST_CASE("the JSON reader accepts JSON and nothing else") {
    const std::string text =
        R"( {"a": [1, -2.5e3, true, false, null], "s": "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"} )";
    JsonValue v = parse_json(text);
    REQUIRE(v.kind == JsonValue::Kind::object);
    REQUIRE(v.find("a"));
    CHECK(v.find("a")->items.size() == 5);
    CHECK(v.find("a")->items[1].text == "-2.5e3");
    CHECK(v.find("s")->text == "x\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(v.begin == 1);
    CHECK(v.end == text.size() - 1);
    CHECK(text.substr(v.find("s")->begin, 4) == "\"x\\\"");
    uint64_t n = 0;
    CHECK(parse_json("18446744073709551615").to_u64(&n));
    CHECK(n == UINT64_MAX);
    CHECK_FALSE(parse_json("18446744073709551616").to_u64(&n));
    CHECK_FALSE(parse_json("-1").to_u64(&n));
    CHECK_FALSE(parse_json("1.0").to_u64(&n));
    CHECK_FALSE(parse_json("1e2").to_u64(&n));

    struct Bad {
      std::string text;
      size_t offset;
    };
    const std::vector<Bad> bad = {
        {"", 0},
        {"{", 1},
        {"[1,]", 3},
        {"{\"a\":1,}", 7},
        {"{\"a\":1 \"b\":2}", 7},
        {"{\"a\":1,\"a\":2}", 7},
        {"01", 1},
        {"1.", 2},
        {"-", 1},
        {"+1", 0},
        {".5", 0},
        {"tru", 0},
        {"\"a\nb\"", 2},
        {"\"a", 0},
        {"\"\\x\"", 1},
        {"\"\\u12g4\"", 5},
        {"\"\\u123", 3},
        {"\"\\ud800\"", 1},
        {"\"\\udc00\"", 1},
        {"\"\xc3\"", 1},
        {"\"\xc0\x80\"", 1},
        {"\"\xed\xa0\x80\"", 1},
        {"\"\xf4\x90\x80\x80\"", 1},
        {"{} x", 3},
        {"// c\n{}", 0},
        {"{'a':1}", 1},
        {std::string(65, '['), 64},
    };
    for (const Bad& b : bad) {
      CAPTURE(b.text);
      try {
        parse_json(b.text);
        FAIL_CHECK("accepted");
      } catch (const JsonSyntaxError& e) {
        CHECK(e.offset() == b.offset);
      }
    }
    CHECK_NOTHROW(parse_json(std::string(64, '[') + std::string(64, ']')));

    std::string out;
    CHECK(append_json_string(out, "a\"b\\c\n\x01\x7f\xc3\xa9"));
    CHECK(out == "\"a\\\"b\\\\c\\n\\u0001\x7f\xc3\xa9\"");
    CHECK(parse_json(out).text == "a\"b\\c\n\x01\x7f\xc3\xa9");
    std::string unchanged = "x";
    CHECK_FALSE(append_json_string(unchanged, "\xff"));
    CHECK(unchanged == "x");
  }

  TEST_CASE("every dtype, scalars and empty tensors round trip bit for bit") {
    TempDir dir;
    const std::string path = dir.file("all.ckpt");
    const Checkpoint c = sample_checkpoint();
    write_checkpoint(path, c);
    const Checkpoint r = read_checkpoint(path);
    REQUIRE(r.tensors.size() == c.tensors.size());
    for (const CheckpointTensor& t : c.tensors) {
      CAPTURE(t.name);
      const Tensor* got = r.find(t.name);
      REQUIRE(got);
      CHECK(same_bytes(*got, t.value));
    }
    CHECK(r.find("dense/kernel")->shape() == Shape{2, 3});
    CHECK(r.find("scalar")->shape().rank() == 0);
    CHECK(r.find("empty")->shape() == Shape{0, 4});
    CHECK(r.find("missing") == nullptr);
    // Stored by decreasing element size, in the caller's order within one size.
    std::vector<std::string> order;
    for (const CheckpointTensor& t : r.tensors) order.push_back(t.name);
    CHECK(order == std::vector<std::string>{"w64", "big", "scalar", "iter", "dense/kernel",
                                            "dense/kernel/adam_m", "ids", "empty", "half", "brain", "flag",
                                            "bytes", "empty_u8"});
    // Writing what was read gives the same file.
    write_checkpoint(dir.file("again.ckpt"), r);
    CHECK(read_bytes(dir.file("again.ckpt")) == read_bytes(path));
    CHECK(dir.entries() == std::vector<std::string>{"again.ckpt", "all.ckpt"});
  }

  TEST_CASE("metadata round trips; the writer's keys are set, the caller's kept") {
    TempDir dir;
    const std::string path = dir.file("m.ckpt");
    auto meta = caller_metadata();
    meta["spec"] = "[model]\nname = \"caf\xc3\xa9\"\t# \\ and \x01 and \xf0\x9f\x98\x80\n";
    meta["extra key"] = "";
    meta["format"] = "something else";  // the writer's keys win
    meta["checksum"] = "nonsense";
    write_checkpoint(path, meta, {});
    const Checkpoint r = read_checkpoint(path);
    CHECK(r.tensors.empty());
    for (const auto& [k, v] : caller_metadata()) CHECK(r.metadata.at(k) == (k == "spec" ? meta["spec"] : v));
    CHECK(r.metadata.at("extra key") == "");
    CHECK(r.metadata.at("format") == "trainer-checkpoint");
    CHECK(r.metadata.at("format_version") == "1");
    CHECK(r.metadata.at("producer").starts_with("trainer "));
    CHECK(r.metadata.at("checksum").starts_with("xxh64:"));
    CHECK(r.metadata.at("checksum").size() == 39);
    CHECK(r.metadata.size() == caller_metadata().size() + 5);
    CHECK(checkpoint_int(r.metadata, "step", path) == 938);
    CHECK(checkpoint_value(r.metadata, "cursor", path) == "epoch=2 batch=0");
    CHECK_THROWS_AS(checkpoint_int(r.metadata, "cursor", path), InputError);
    CHECK_THROWS_AS(checkpoint_value(r.metadata, "nope", path), InputError);
    CHECK(read_bytes(path).size() % 8 == 0);
  }

  TEST_CASE("read_checkpoint_metadata describes the tensors without reading them") {
    TempDir dir;
    const std::string path = dir.file("m.ckpt");
    write_checkpoint(path, sample_checkpoint());
    const CheckpointInfo info = read_checkpoint_metadata(path);
    const Checkpoint sample = sample_checkpoint();
    const Bytes file = read_bytes(path);
    CHECK(info.file_bytes == file.size());
    CHECK(info.metadata.at("epoch") == "2");
    REQUIRE(info.tensors.size() == sample_checkpoint().tensors.size());
    for (const CheckpointTensorInfo& t : info.tensors) {
      CAPTURE(t.name);
      const Tensor* want = sample.find(t.name);
      REQUIRE(want);
      CHECK(t.dtype == want->dtype());
      CHECK(t.shape == want->shape());
      CHECK(t.nbytes == want->nbytes());
      CHECK(t.file_offset % engine::dtype_bytes(t.dtype) == 0);
      CHECK(file.compare(t.file_offset, t.nbytes, static_cast<const char*>(want->raw()), want->nbytes()) ==
            0);
    }
  }

  TEST_CASE("one flipped byte anywhere is an InputError naming the file") {
    TempDir dir;
    const std::string good = dir.file("good.ckpt"), bad = dir.file("bad.ckpt");
    // A metadata value long enough that the header needs padding, which is then among the bytes flipped.
    Checkpoint c = sample_checkpoint();
    Bytes file;
    uint64_t header_end = 0;
    for (int tries = 0;; ++tries) {
      REQUIRE(tries < 8);
      write_checkpoint(good, c);
      file = read_bytes(good);
      header_end = 8;
      for (int i = 0; i < 8; ++i) header_end += uint64_t{static_cast<uint8_t>(file[i])} << (8 * i);
      if (file[header_end - 1] == ' ') break;
      c.metadata["padding"] += "x";
    }
    REQUIRE(header_end < file.size());
    int header_flips = 0, payload_flips = 0;
    for (size_t at = 0; at < file.size(); ++at) {
      for (uint8_t mask : {0x01, 0x20, 0xff}) {
        Bytes damaged = file;
        damaged[at] = static_cast<char>(damaged[at] ^ mask);
        write_bytes(bad, damaged);
        CAPTURE(at);
        CAPTURE(int{mask});
        InputError e = read_error(bad);
        CHECK(e.where().starts_with(bad));
        CHECK(contains(e.hint(), "damaged"));
        if (at < header_end) {
          ++header_flips;
          CHECK(read_error(bad, true).where().starts_with(bad));
        } else {
          // The cheap read does not look at tensor data; the full one names the checksum.
          ++payload_flips;
          CHECK_NOTHROW(read_checkpoint_metadata(bad));
          CHECK(contains(e.what(), "tensor data does not match the checksum"));
        }
      }
    }
    CHECK(header_flips > 1000);
    CHECK(payload_flips > 100);
  }

  TEST_CASE("a truncated or extended checkpoint is an InputError naming the file") {
    TempDir dir;
    const std::string good = dir.file("good.ckpt"), bad = dir.file("short.ckpt");
    write_checkpoint(good, sample_checkpoint());
    const Bytes file = read_bytes(good);
    uint64_t header_end = 8;
    for (int i = 0; i < 8; ++i) header_end += uint64_t{static_cast<uint8_t>(file[i])} << (8 * i);
    for (size_t len : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{100}, header_end - 1,
                       header_end, header_end + 1, header_end + 20, file.size() - 1}) {
      CAPTURE(len);
      write_bytes(bad, file.substr(0, len));
      for (bool metadata_only : {false, true}) {
        InputError e = read_error(bad, metadata_only);
        CHECK(e.where().starts_with(bad));
        CHECK(contains(e.what(), "truncated"));
        CHECK(contains(e.hint(), "damaged"));
      }
    }
    write_bytes(bad, file + "x");
    InputError e = read_error(bad, true);
    CHECK(e.where() == bad);
    CHECK(contains(e.what(), "bytes of data after the header"));
    CHECK(contains(read_error(dir.file("absent.ckpt")).what(), "cannot open"));
    CHECK(contains(read_error(dir.path).what(), "not a regular file"));
  }

  TEST_CASE("a newer format_version is refused with a hint") {
    TempDir dir;
    const std::string path = dir.file("new.ckpt");
    write_checkpoint(path, sample_checkpoint());
    Bytes file = read_bytes(path);
    size_t at = file.find("\"format_version\":\"1\"");
    REQUIRE(at != std::string::npos);
    file[at + 18] = '2';
    write_bytes(path, reseal(file));
    InputError e = read_error(path, true);
    CHECK(e.where() == path);
    CHECK(contains(e.what(), "format_version 2 is newer than this trainer reads (1)"));
    CHECK(contains(e.hint(), "newer trainer"));
    // Without a matching checksum, it may as well be damage: the message says both.
    write_bytes(path, file);
    e = read_error(path);
    CHECK(contains(e.what(), "damaged, or uses checkpoint format_version 2"));
    CHECK(contains(e.hint(), "newer trainer"));
    CHECK(contains(e.hint(), "earlier checkpoint"));
    // The writer's own version reads, so the edit above was the only fault.
    file[at + 18] = '1';
    write_bytes(path, reseal(file));
    CHECK_NOTHROW(read_checkpoint(path));
  }

  TEST_CASE("a safetensors file from elsewhere is not a checkpoint") {
    TempDir dir;
    const std::string path = dir.file("other.safetensors");
    write_bytes(path, seal(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", Bytes(4, '\0')));
    CHECK(contains(read_error(path).what(), "not a trainer checkpoint: its header has no __metadata__"));
    write_bytes(path, seal(R"({"__metadata__":{"format":"pt","checksum":"CHECKSUM"}})", ""));
    InputError e = read_error(path);
    CHECK(contains(e.what(), "not a trainer checkpoint"));
    CHECK(contains(e.hint(), "another program"));
  }

  TEST_CASE("inconsistent entries are refused even under a valid checksum") {
    TempDir dir;
    const std::string path = dir.file("c.ckpt");
    const std::string meta = metadata_json();
    auto entry = [](const std::string& name, const std::string& body) {
      return ",\"" + name + "\":{" + body + "}";
    };
    // The baseline is valid, so each case below fails for its own reason only.
    write_bytes(path, seal("{" + meta + entry("a", R"("dtype":"F32","shape":[2],"data_offsets":[0,8])") + "}",
                           Bytes(8, '\1')));
    CHECK(read_checkpoint(path).find("a")->shape() == Shape{2});

    struct Case {
      std::string header;
      size_t payload_bytes;
      std::string message;
    };
    const std::string f32_2 = R"("dtype":"F32","shape":[2],)";
    const std::vector<Case> cases = {
        {meta + entry("a", f32_2 + R"("data_offsets":[0,8])") +
             entry("b", f32_2 + R"("data_offsets":[4,12])"),
         12, "tensor \"b\" starts at byte 4 of the data, but the tensors before it end at 8"},
        {meta + entry("a", f32_2 + R"("data_offsets":[4,12])"), 12, "tensors before it end at 0"},
        {meta + entry("a", f32_2 + R"("data_offsets":[0,8])"), 12,
         "the tensors end at byte 8 of the data, but the file has 12"},
        {meta + entry("a", f32_2 + R"("data_offsets":[0,12])"), 12,
         "needs 8 bytes, but its data_offsets span 12"},
        {meta + entry("a", f32_2 + R"("data_offsets":[8,0])"), 8, "no valid data_offsets"},
        {meta + entry("a", f32_2 + R"("data_offsets":[0,8,9])"), 8, "no valid data_offsets"},
        {meta + entry("a", f32_2 + R"("data_offsets":[0,16])"), 8, "needs 8 bytes"},
        {meta + entry("a", R"("dtype":"F32","shape":[4],"data_offsets":[0,16])"), 8,
         "past the end of the file"},
        {meta + entry("a", R"("dtype":"F8","shape":[2],"data_offsets":[0,2])"), 2,
         "no dtype this trainer reads"},
        {meta + entry("a", R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), 8, "not a size"},
        {meta + entry("a", R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"), 8, "not a size"},
        {meta + entry("a", R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8])"), 8,
         "not a size"},
        {meta + entry("a", R"("dtype":"F32","shape":2,"data_offsets":[0,8])"), 8, "no valid shape"},
        {meta + entry("a", f32_2 + R"("data_offsets":[0,8],"extra":1)"), 8, "unknown field \"extra\""},
        {meta + R"(,"a":[])", 0, "is not an object"},
        {R"("__metadata__":{"format":"trainer-checkpoint","format_version":"1","checksum":"CHECKSUM"})", 0,
         "the metadata has no \"producer\""},
        {metadata_json().replace(metadata_json().find("\"rng\":\"\","), 9, ""), 0,
         "the metadata has no \"rng\""},
        {metadata_json().replace(metadata_json().find("\"epoch\":\"0\""), 11, "\"epoch\":\"-1\""), 0,
         "\"epoch\" = \"-1\" is not a count"},
        {metadata_json().replace(metadata_json().find("\"step\":\"0\""), 10, "\"step\":1"), 0,
         "metadata value \"step\" is not a string"},
        {metadata_json("x"), 0, "format_version \"x\" is not a version number"},
        {metadata_json("0"), 0, "format_version \"0\" is not a version number"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.header);
      write_bytes(path, seal("{" + c.header + "}", Bytes(c.payload_bytes, '\1')));
      InputError e = read_error(path, true);
      CHECK(e.where().starts_with(path));
      CHECK(contains(e.what(), c.message));
      CHECK(contains(e.hint(), "damaged"));
    }
    // A header that does not parse names the byte.
    write_bytes(path, seal("{" + meta + ",\"a\":{\"dtype\" \"F32\"}}", ""));
    InputError e = read_error(path, true);
    // The CHECKSUM token grows by 31 bytes when sealed.
    CHECK(e.where() == path + ": byte " + std::to_string(8 + 1 + meta.size() + 31 + 14));
    CHECK(contains(e.what(), "not valid JSON: expected ':' after an object key"));
    // A checksum spelled with an escape decodes to the same text, but its digits are not where the digest
    // zeroed them: refused rather than misread.
    write_bytes(path, seal("{" + meta + "}", "", "\\u0078xh64:"));
    e = read_error(path, true);
    CHECK(contains(e.what(), "checksum \"xxh64:"));
    CHECK(contains(e.what(), "is not written as xxh64:<16 hex digits>:<16 hex digits>"));
    write_bytes(path, seal("{" + meta + "}", ""));
    CHECK_NOTHROW(read_checkpoint(path));
    // Huge header lengths are found before anything is allocated.
    Bytes huge(8, '\xff');
    write_bytes(path, huge + "{}");
    CHECK(contains(read_error(path).what(), "runs past the end of the file"));
  }

  TEST_CASE("a tensor source that fails midway leaves the old file and no temporary file") {
    TempDir dir;
    const std::string path = dir.file("last.ckpt");
    write_checkpoint(path, sample_checkpoint());
    const Bytes before = read_bytes(path);

    // 3 MiB: several chunks, so the failure comes after bytes reached the temporary file.
    Tensor big(DType::f32, {3, 1 << 18});
    CheckpointTensorSource failing = tensor_source("big", big);
    int calls = 0;
    failing.read = [&calls, inner = failing.read](uint64_t offset, std::span<std::byte> dst) {
      if (++calls == 2) throw std::runtime_error("device copy failed");
      inner(offset, dst);
    };
    const auto sample = sample_checkpoint();  // a source reads its tensor's bytes later: keep them alive
    std::vector<CheckpointTensorSource> sources = {tensor_source("a", sample.tensors[0].value), failing};
    CHECK_THROWS_WITH(write_checkpoint(path, caller_metadata(), sources), "device copy failed");
    CHECK(calls == 2);
    CHECK(read_bytes(path) == before);
    CHECK(dir.entries() == std::vector<std::string>{"last.ckpt"});
    CHECK_NOTHROW(read_checkpoint(path));
  }

  TEST_CASE("a failing disk write leaves the old file and no temporary file") {
    TempDir dir;
    const std::string path = dir.file("last.ckpt");
    write_checkpoint(path, sample_checkpoint());
    const Bytes before = read_bytes(path);
    // A file size limit makes write() fail with EFBIG partway, as a full disk would with ENOSPC.
    struct FileSizeLimit {
      rlimit old_limit;
      void (*old_handler)(int);
      explicit FileSizeLimit(rlim_t bytes) {
        REQUIRE(getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
        old_handler = signal(SIGXFSZ, SIG_IGN);
        rlimit small = old_limit;
        small.rlim_cur = bytes;
        REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
      }
      ~FileSizeLimit() {
        setrlimit(RLIMIT_FSIZE, &old_limit);
        signal(SIGXFSZ, old_handler);
      }
    };
    Checkpoint c = sample_checkpoint();
    c.tensors.push_back({"huge", Tensor(DType::f32, {1 << 18})});
    std::string what;
    try {
      FileSizeLimit limit(256 << 10);
      write_checkpoint(path, c);
    } catch (const RuntimeError& e) {
      what = e.what();
    }
    CHECK(contains(what, path + ": writing failed"));
    CHECK(read_bytes(path) == before);
    CHECK(dir.entries() == std::vector<std::string>{"last.ckpt"});
  }

  TEST_CASE("an unwritable destination is an InputError naming it, and nothing is left behind") {
    TempDir dir;
    const Checkpoint c = sample_checkpoint();
    const std::string missing = dir.file("no/such/dir/x.ckpt");
    try {
      write_checkpoint(missing, c);
      FAIL_CHECK("written");
    } catch (const InputError& e) {
      CHECK(e.where() == missing);
      CHECK(contains(e.what(), "cannot create a file in directory"));
      CHECK(contains(e.hint(), "writable"));
    }
    write_bytes(dir.file("plain"), "x");
    CHECK_THROWS_AS(write_checkpoint(dir.file("plain/x.ckpt"), c), InputError);
    // A directory in the way is found before anything is written (a FIFO or a device likewise).
    std::filesystem::create_directory(dir.file("sub"));
    try {
      write_checkpoint(dir.file("sub"), c);
      FAIL_CHECK("written");
    } catch (const InputError& e) {
      CHECK(e.where() == dir.file("sub"));
      CHECK(contains(e.what(), "is not a regular file"));
    }
    CHECK(dir.entries() == std::vector<std::string>{"plain", "sub"});
    // Permissions do not stop root, so the read-only directory case runs for other users only.
    if (geteuid() != 0) {
      const std::string ro = dir.file("ro");
      std::filesystem::create_directory(ro);
      write_checkpoint(ro + "/last.ckpt", c);
      const Bytes before = read_bytes(ro + "/last.ckpt");
      chmod(ro.c_str(), 0555);
      CHECK_THROWS_AS(write_checkpoint(ro + "/last.ckpt", c), InputError);
      chmod(ro.c_str(), 0755);
      CHECK(read_bytes(ro + "/last.ckpt") == before);
    }
  }

  TEST_CASE("tensor names that a header cannot carry are refused when writing") {
    TempDir dir;
    const std::string path = dir.file("x.ckpt");
    Tensor t = Tensor::scalar<float>(1.0f);
    auto write = [&](std::vector<std::string> names) {
      std::vector<CheckpointTensorSource> s;
      for (auto& n : names) s.push_back(tensor_source(n, t));
      write_checkpoint(path, caller_metadata(), s);
    };
    CHECK_THROWS_WITH_AS(write({"a", "b", "a"}), doctest::Contains("two tensors are named \"a\""),
                         InputError);
    CHECK_THROWS_WITH_AS(write({""}), doctest::Contains("cannot name a tensor"), InputError);
    CHECK_THROWS_WITH_AS(write({"__metadata__"}), doctest::Contains("cannot name a tensor"), InputError);
    CHECK_THROWS_WITH_AS(write({"bad\xff"}), doctest::Contains("is not valid UTF-8"), InputError);
    auto meta = caller_metadata();
    meta["note"] = "\xc0";
    CHECK_THROWS_AS(write_checkpoint(path, meta, {}), InputError);
    meta.erase("note");
    meta.erase("rng");
    CHECK_THROWS_AS(write_checkpoint(path, meta, {}), InternalError);
    CHECK(dir.entries().empty());
    write({"dense/kernel", "dense/kernel/adam_m", "caf\xc3\xa9 \"q\""});
    CHECK(read_checkpoint(path).find("caf\xc3\xa9 \"q\"") != nullptr);
  }

  TEST_CASE("large tensors stream through a bounded buffer") {
    TempDir dir;
    const std::string path = dir.file("big.ckpt");
    Tensor big = raw_tensor(DType::u8, {(3 << 20) + 5}, 1);
    CheckpointTensorSource s = tensor_source("big", big);
    std::vector<std::pair<uint64_t, size_t>> chunks;
    s.read = [&chunks, inner = s.read](uint64_t offset, std::span<std::byte> dst) {
      chunks.emplace_back(offset, dst.size());
      inner(offset, dst);
    };
    write_checkpoint(path, caller_metadata(), {s});
    REQUIRE(chunks.size() == 4);
    uint64_t next = 0;
    for (auto [offset, n] : chunks) {
      CHECK(offset == next);
      CHECK(n <= (size_t{1} << 20));
      next += n;
    }
    CHECK(next == big.nbytes());
    CHECK(same_bytes(*read_checkpoint(path).find("big"), big));
  }

  TEST_CASE("AtomicFile replaces on commit and leaves nothing when abandoned") {
    TempDir dir;
    const std::string path = dir.file("history.jsonl");
    write_file_atomically(path, "old\n");
    {
      AtomicFile f(path);
      f.write("new contents\n");
      CHECK(f.temp_path().starts_with(dir.path + "/.history.jsonl.tmp-"));
      CHECK(std::filesystem::exists(f.temp_path()));
      CHECK(read_bytes(path) == "old\n");
    }
    CHECK(read_bytes(path) == "old\n");
    CHECK(dir.entries() == std::vector<std::string>{"history.jsonl"});
    AtomicFile f(path);
    f.write("0123456789");
    f.write_at(2, "ab", 2);
    CHECK(f.size() == 10);
    f.commit();
    CHECK(read_bytes(path) == "01ab456789");
    CHECK(dir.entries() == std::vector<std::string>{"history.jsonl"});
    struct stat st;
    REQUIRE(stat(path.c_str(), &st) == 0);
    mode_t mask = umask(0);
    umask(mask);
    CHECK((st.st_mode & 0777) == (0666 & ~mask));
    // A relative path lands in the current directory.
    const auto cwd = std::filesystem::current_path();
    std::filesystem::current_path(dir.path);
    write_file_atomically("rel.txt", "r");
    std::filesystem::current_path(cwd);
    CHECK(read_bytes(dir.file("rel.txt")) == "r");
  }
}
