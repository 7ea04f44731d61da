// TensorBoard event files: TFRecord framing of Event protobufs, encoded here by hand (a scalar summary needs
// four fields), so the tool needs no TensorFlow or TensorBoard headers.
#include "formats/tensorboard.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "engine/util/error.h"

namespace trainer::formats {

namespace {

constexpr std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

// TFRecord stores a rotated CRC with a constant added ("masked"), so that a CRC of data holding CRCs stays
// well distributed.
uint32_t masked_crc(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

void put_le(std::string& s, uint64_t v, int bytes) {
  for (int k = 0; k < bytes; ++k) s.push_back(static_cast<char>(v >> (8 * k)));
}

void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) {
    s.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
}

void put_f64(std::string& s, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_le(s, bits, 8);
}

void put_double(std::string& s, int field, double v) {
  put_varint(s, static_cast<uint64_t>(field) << 3 | 1);  // wire type 1: 64 bits
  put_f64(s, v);
}

// A length-delimited field (wire type 2): a string or an embedded message.
void put_bytes(std::string& s, int field, const std::string& bytes) {
  put_varint(s, static_cast<uint64_t>(field) << 3 | 2);
  put_varint(s, bytes.size());
  s += bytes;
}

std::string event_file_name() {
  char host[256] = "localhost";
  if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  host[sizeof host - 1] = '\0';
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return fmt::format("events.out.tfevents.{}.{}.{}.v2",
                     std::chrono::duration_cast<std::chrono::seconds>(now).count(), host,
                     static_cast<long>(getpid()));
}

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  static constexpr std::array<uint32_t, 256> table = crc32c_table();
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::string tfrecord(const std::string& data) {
  std::string r;
  put_le(r, data.size(), 8);
  put_le(r, masked_crc(r.data(), 8), 4);
  r += data;
  put_le(r, masked_crc(data.data(), data.size()), 4);
  return r;
}

// Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
// Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
std::string tensorboard_event(double wall_time, int64_t step,
                              const std::vector<std::pair<std::string, double>>& values,
                              const std::string& file_version) {
  std::string e;
  put_double(e, 1, wall_time);
  if (step != 0) {
    e.push_back(static_cast<char>(2 << 3 | 0));  // field 2, varint (two's complement, as protobuf's int64)
    put_varint(e, static_cast<uint64_t>(step));
  }
  if (!file_version.empty()) put_bytes(e, 3, file_version);
  if (!values.empty()) {
    std::string summary;
    for (const auto& [tag, v] : values) {
      std::string value;
      put_bytes(value, 1, tag);
      value.push_back(static_cast<char>(2 << 3 | 5));  // field 2, 32-bit
      const auto f = static_cast<float>(v);
      uint32_t fb;
      std::memcpy(&fb, &f, sizeof fb);
      put_le(value, fb, 4);
      put_bytes(summary, 1, value);
    }
    put_bytes(e, 5, summary);
  }
  return e;
}

Histogram histogram_of(const engine::Tensor& t, int buckets) {
  Histogram h;
  bool any = false;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = t.get_f64(i);
    if (!std::isfinite(v)) continue;
    h.min = any ? std::min(h.min, v) : v;
    h.max = any ? std::max(h.max, v) : v;
    any = true;
    h.num += 1;
    h.sum += v;
    h.sum_squares += v * v;
  }
  if (!any) return h;
  const int n = h.max > h.min ? std::max(buckets, 1) : 1;
  const double width = (h.max - h.min) / n;
  h.bucket.assign(static_cast<size_t>(n), 0.0);
  for (int k = 0; k < n; ++k) h.bucket_limit.push_back(k + 1 == n ? h.max : h.min + width * (k + 1));
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = t.get_f64(i);
    if (!std::isfinite(v)) continue;
    // The first bucket whose right edge is at or above v (the maximum falls in the last).
    auto k = static_cast<int64_t>(width > 0 ? (v - h.min) / width : 0);
    k = std::clamp<int64_t>(k, 0, n - 1);
    while (k > 0 && v <= h.bucket_limit[static_cast<size_t>(k - 1)]) --k;
    while (k + 1 < n && v > h.bucket_limit[static_cast<size_t>(k)]) ++k;
    h.bucket[static_cast<size_t>(k)] += 1;
  }
  return h;
}

// HistogramProto { double min = 1; double max = 2; double num = 3; double sum = 4; double sum_squares = 5;
// repeated double bucket_limit = 6 [packed]; repeated double bucket = 7 [packed]; }, as Summary.Value's histo
// (field 5).
std::string tensorboard_histogram_event(double wall_time, int64_t step,
                                        const std::vector<std::pair<std::string, Histogram>>& histograms) {
  std::string e = tensorboard_event(wall_time, step, {});
  std::string summary;
  for (const auto& [tag, h] : histograms) {
    std::string proto;
    int field = 1;
    for (double v : {h.min, h.max, h.num, h.sum, h.sum_squares}) put_double(proto, field++, v);
    for (const std::vector<double>* list : {&h.bucket_limit, &h.bucket}) {
      std::string packed;
      for (double v : *list) put_f64(packed, v);
      put_bytes(proto, field++, packed);
    }
    std::string value;
    put_bytes(value, 1, tag);
    put_bytes(value, 5, proto);
    put_bytes(summary, 1, value);
  }
  put_bytes(e, 5, summary);
  return e;
}

TensorBoardWriter::TensorBoardWriter(std::string log_dir) : log_dir_(std::move(log_dir)) {
  for (const char* run : {"train", "validation"}) {
    const std::filesystem::path p = std::filesystem::path(log_dir_) / run;
    std::error_code ec;
    std::vector<std::string> missing;
    for (std::filesystem::path at = p; !at.empty() && !std::filesystem::exists(at, ec);
         at = at.parent_path()) {
      missing.insert(missing.begin(), at.string());
      if (at == at.parent_path()) break;
    }
    for (std::string& m : missing)
      if (std::find(made_.begin(), made_.end(), m) == made_.end()) made_.push_back(std::move(m));
    std::filesystem::create_directories(p, ec);
    if (ec || !std::filesystem::is_directory(p))
      throw InputError(log_dir_,
                       fmt::format("cannot make the TensorBoard folder {}: {}", p.string(),
                                   ec ? ec.message() : "a file of that name is in the way"),
                       "give --tensorboard a folder that can be written, or one that does not exist yet");
  }
}

TensorBoardWriter::~TensorBoardWriter() {
  for (File& f : files_)
    if (f.f) std::fclose(f.f);
  if (!files_.empty()) return;
  for (auto it = made_.rbegin(); it != made_.rend(); ++it) {
    std::error_code ec;
    std::filesystem::remove(*it, ec);  // an empty folder only; one holding anything stays
  }
}

std::string TensorBoardWriter::write(const std::string& run, int64_t step,
                                     const std::vector<std::pair<std::string, double>>& values, bool sync) {
  return append(run, tensorboard_event(wall_seconds(), step, values), sync);
}

std::string TensorBoardWriter::write_histograms(
    const std::string& run, int64_t step,
    const std::vector<std::pair<std::string, engine::Tensor>>& tensors) {
  std::vector<std::pair<std::string, Histogram>> histograms;
  for (const auto& [name, t] : tensors) histograms.emplace_back(name, histogram_of(t));
  return append(run, tensorboard_histogram_event(wall_seconds(), step, histograms));
}

std::string TensorBoardWriter::append(const std::string& run, const std::string& event, bool sync) {
  File* file = nullptr;
  for (File& f : files_)
    if (f.run == run) file = &f;
  std::string records;
  if (!file) {
    const std::string path = (std::filesystem::path(log_dir_) / run / event_file_name()).string();
    std::FILE* f = std::fopen(path.c_str(), "ab");
    if (!f) return fmt::format("cannot create {}: {}", path, std::strerror(errno));
    files_.push_back({run, f});
    file = &files_.back();
    records += tfrecord(tensorboard_event(wall_seconds(), 0, {}, "brain.Event:2"));
  }
  records += tfrecord(event);
  // Appended and synced as each epoch ends, not written to a temporary file and renamed: TensorBoard follows
  // an event file by its open handle and would never see a replaced one grow. A record cut short by a crash
  // fails its checksum and is skipped by readers; nothing before it is touched.
  if (std::fwrite(records.data(), 1, records.size(), file->f) != records.size() ||
      std::fflush(file->f) != 0 || (sync && fsync(fileno(file->f)) != 0))
    return fmt::format("cannot write the TensorBoard events in {}/{}: {}", log_dir_, run,
                       std::strerror(errno));
  return "";
}

}  // namespace trainer::formats
