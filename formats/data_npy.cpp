// The NPY header parser and the zip central-directory reader behind NPZ archives. Stored members are used in
// place in the mapped archive; deflated ones are inflated once with zlib.
#include "formats/data_npy.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "engine/util/error.h"
#include "formats/data_bytes.h"
#include "formats/data_pickle.h"
#include "formats/datasets.h"
#include "formats/model_spec.h"

namespace trainer::formats {

namespace {

// Whether [offset, offset + length) lies within a file of `size` bytes, without the sum wrapping: zip64
// fields are 64 bits, so a damaged one can be near 2^64.
bool fits(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

constexpr const char* kNpyDtypes =
    "uint8 ('|u1'), bool ('|b1'), int32 ('<i4'), int64 ('<i8'), float32 ('<f4') and "
    "float64 ('<f8')";

// The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), }
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string where) : s_(text), where_(std::move(where)) {}

  void parse(std::string* descr, bool* fortran, std::vector<int64_t>* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    expect('{');
    for (;;) {
      skip();
      if (peek() == '}') break;
      std::string key = string_literal();
      expect(':');
      skip();
      if (key == "descr") {
        if (peek() == '[') fail("a structured dtype (a list of fields): trainer reads plain numeric arrays");
        *descr = string_literal();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran = boolean();
        have_fortran = true;
      } else if (key == "shape") {
        *shape = tuple();
        have_shape = true;
      } else {  // numpy.load refuses other keys too
        fail(fmt::format("unexpected key '{}'", key));
      }
      skip();
      if (peek() == ',') ++i_;
    }
    if (!have_descr || !have_fortran || !have_shape)
      fail("the header lacks 'descr', 'fortran_order' or 'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError(where_, fmt::format("bad NPY header: {}", what), "write the array with numpy.save");
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  void expect(char c) {
    skip();
    if (peek() != c) fail(fmt::format("expected '{}' at column {} of '{}'", c, i_ + 1, clipped(s_)));
    ++i_;
  }
  std::string string_literal() {
    skip();
    char q = peek();
    if (q != '\'' && q != '"')
      fail(fmt::format("expected a quoted string at column {} of '{}'", i_ + 1, clipped(s_)));
    size_t end = s_.find(q, i_ + 1);
    if (end == std::string_view::npos) fail("an unterminated string");
    std::string out(s_.substr(i_ + 1, end - i_ - 1));
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.substr(i_, 4) == "True") {
      i_ += 4;
      return true;
    }
    if (s_.substr(i_, 5) == "False") {
      i_ += 5;
      return false;
    }
    fail("fortran_order is neither True nor False");
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> dims;
    for (;;) {
      skip();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek())))
        fail(fmt::format("a bad shape in '{}'", clipped(s_)));
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        v = v * 10 + (s_[i_] - '0');
        if (v > (int64_t{1} << 48)) fail("a dimension too large");
        ++i_;
      }
      if (peek() == 'L') ++i_;  // Python 2 longs
      dims.push_back(v);
      skip();
      if (peek() == ',') ++i_;
    }
    ++i_;
    return dims;
  }
  std::string_view s_;
  size_t i_ = 0;
  std::string where_;
};

engine::DType dtype_of_descr(const std::string& descr, const std::string& where) {
  const char order = descr.empty() ? '?' : descr[0];
  const std::string code =
      (order == '<' || order == '>' || order == '|' || order == '=') ? descr.substr(1) : descr;
  if (code == "O") {
    throw InputError(where, "an object array (Python objects, such as ragged lists of token ids)",
                     "add [data.sequences] to pad them as keras.utils.pad_sequences does (with load_data = "
                     "true for keras.datasets' imdb.npz), or store integers padded to one length");
  }
  engine::DType t;
  if (code == "u1" || code == "b1") {
    t = engine::DType::u8;
  } else if (code == "i4") {
    t = engine::DType::i32;
  } else if (code == "i8") {
    t = engine::DType::i64;
  } else if (code == "f4") {
    t = engine::DType::f32;
  } else if (code == "f8") {
    t = engine::DType::f64;
  } else {
    throw InputError(where,
                     fmt::format("dtype '{}' is not supported; NPY datasets hold {}", descr, kNpyDtypes),
                     "convert it with numpy, e.g. x.astype('float32')");
  }
  if (order == '>' && engine::dtype_bytes(t) > 1) {
    throw InputError(where, fmt::format("the array is big-endian ('{}')", descr),
                     fmt::format("convert it with numpy: x.astype('<{}')", code));
  }
  return t;
}

}  // namespace

NpyDict parse_npy_dict(std::string_view text, const std::string& where) {
  NpyDict d;
  HeaderParser(text, where).parse(&d.descr, &d.fortran, &d.shape);
  return d;
}

engine::DType npy_dtype(const std::string& descr, const std::string& where) {
  return dtype_of_descr(descr, where);
}

InputError npy_version_error(const std::string& name, int major, int minor) {
  return InputError(
      at_byte(name, 6),
      fmt::format("NPY format version {}.{} is not supported (1, 2 and 3 are)", major, minor),
      "write it with numpy.save, or check that the file is whole (the version is bytes 6 and 7)");
}

NpyHeader parse_npy_header(const Bytes& bytes, uint64_t base, uint64_t size, const std::string& name,
                           bool* objects) {
  const uint8_t* p = bytes.data() + base;
  if (size < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) {
    throw InputError(at_byte(name, 0), "not an NPY file: it does not start with \"\\x93NUMPY\"",
                     "write arrays with numpy.save (or numpy.savez for .npz)");
  }
  const int major = p[6];
  uint64_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = le16(p + 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) throw InputError(at_byte(name, size), "the file ends inside the NPY header");
    header_len = le32(p + 8);
    start = 12;
  } else {
    throw npy_version_error(name, major, p[7]);
  }
  if (start + header_len > size) {
    throw InputError(
        at_byte(name, size),
        fmt::format("the file ends inside the NPY header, which needs {} bytes", start + header_len),
        "the file is truncated: write it again");
  }
  std::string_view text(reinterpret_cast<const char*>(p + start), header_len);
  NpyHeader h;
  const NpyDict d = parse_npy_dict(text, at_byte(name, start));
  h.shape = d.shape;
  if (objects && (d.descr == "|O" || d.descr == "O")) {
    *objects = true;
    h.data_offset = start + header_len;
    return h;
  }
  h.dtype = npy_dtype(d.descr, name);
  if (d.fortran) {
    throw InputError(name, "the array is in Fortran (column-major) order",
                     "save a C-ordered copy: numpy.save(path, numpy.ascontiguousarray(x))");
  }
  if (h.shape.empty()) {
    throw InputError(name, "the array is a scalar",
                     "a dataset is an array whose first dimension counts samples");
  }
  h.data_offset = start + header_len;
  // The product is checked as it grows: dimensions of up to 2^48 each can wrap 64 bits ((2^48, 65536) is
  // 2^64 elements, which wrapped to 0 and passed the size check below).
  uint64_t need = engine::dtype_bytes(h.dtype);
  bool overflow = false;
  for (int64_t d : h.shape)
    overflow = overflow || __builtin_mul_overflow(need, static_cast<uint64_t>(d), &need);
  if (overflow)
    throw InputError(name,
                     fmt::format("the shape {} holds more bytes than any file", engine::Shape(h.shape).str()),
                     "the header is damaged: write the file again");
  if (size - h.data_offset < need) {
    throw InputError(at_byte(name, size),
                     fmt::format("the file ends after {} of its {} data bytes (shape {}, {})",
                                 size - h.data_offset, need, engine::Shape(h.shape).str(), d.descr),
                     "the file is truncated: write it again");
  }
  if (size - h.data_offset > need) {
    throw InputError(at_byte(name, h.data_offset + need),
                     fmt::format("{} bytes follow the data: the header says shape {} ({})",
                                 size - h.data_offset - need, engine::Shape(h.shape).str(), d.descr),
                     "the header does not describe this data: the file may be damaged; write it again");
  }
  return h;
}

namespace {

// The rows of maxlen ids that the Python lists of token ids of an object array become (see read_npy).
// The token ids of one object of an object array, as pad_sequences takes them: a list or a tuple of
// integers, or a numpy array of integers of one dimension.
void sample_ids(const pickle::Value& it, const std::string& name, int64_t i, std::vector<int64_t>* ids) {
  ids->clear();
  const char* hint = "each object must be a list of token ids, as keras.datasets' arrays hold them";
  if (it.kind == pickle::Value::Kind::call) {
    const pickle::Array a = pickle::as_array(it, name, fmt::format("sample {} of the array", i));
    if (a.shape.size() != 1 || !pickle::array_integers(a, ids))
      throw InputError(
          at_byte(name, it.at),
          fmt::format("sample {} of the array is a numpy array of {} of shape ({}), not of token ids", i,
                      engine::dtype_name(a.dtype), fmt::join(a.shape, ", ")),
          hint);
    return;
  }
  const bool sequence = it.kind == pickle::Value::Kind::list || it.kind == pickle::Value::Kind::tuple;
  if (sequence && it.items.empty()) {
    *ids = it.ints;
    return;
  }
  for (const pickle::Ref& v : it.items)
    if (v->kind == pickle::Value::Kind::integer) ids->push_back(v->integer);
  if (!sequence || ids->size() != it.items.size())
    throw InputError(at_byte(name, it.at), fmt::format("sample {} of the array is not a list of integers", i),
                     hint);
}

Column sequence_rows(const std::shared_ptr<const Bytes>& bytes, uint64_t begin, uint64_t end,
                     uint64_t data_offset, const std::string& name, const SequenceSpec& q,
                     int64_t spill_bytes) {
  const pickle::Ref root = pickle::load(bytes, name, begin, end, data_offset);
  const std::vector<pickle::Ref> items = pickle::object_items(*root, name, "the array");
  const int64_t len = q.maxlen;
  const auto n = static_cast<int64_t>(items.size());
  // The rows go out one by one (to a temporary file past spill_bytes: a large set, or many samples that are
  // one list).
  SpillWriter out(spill_bytes, name);
  out.reserve(static_cast<uint64_t>(n) * static_cast<uint64_t>(len) * 4);
  std::vector<int32_t> row(static_cast<size_t>(len));
  std::vector<int64_t> seq, ids;
  for (int64_t i = 0; i < n; ++i) {
    const pickle::Value& it = *items[static_cast<size_t>(i)];
    sample_ids(it, name, i, &ids);
    for (int64_t w : ids)
      if (w < INT32_MIN || w > INT32_MAX)
        throw InputError(at_byte(name, it.at), fmt::format("sample {} holds the id {}, past 32 bits", i, w),
                         "token ids are 32-bit integers");
    seq.clear();
    if (q.load_data) {
      // keras.datasets.imdb.load_data: a start id (unless None), the ids shifted, then those outside
      // [skip_top, num_words) replaced by the out-of-vocabulary id (the start id included, as there), or
      // dropped when that is None.
      if (q.start_char >= 0) seq.push_back(q.start_char);
      for (int64_t w : ids) seq.push_back(w + q.index_from);
      size_t kept = 0;
      for (int64_t w : seq) {
        if (w < q.skip_top || (q.num_words > 0 && w >= q.num_words)) {
          if (q.oov_char < 0) continue;
          w = q.oov_char;
        }
        seq[kept++] = w;
      }
      seq.resize(kept);
      for (int64_t w : seq)
        if (w > INT32_MAX)
          throw InputError(
              at_byte(name, it.at),
              fmt::format("sample {} holds the id {} once shifted by index_from, past 32 bits", i, w),
              "set num_words (an Embedding's input_dim), which maps larger ids to oov_char");
    } else {
      seq = ids;
    }
    // keras.utils.pad_sequences: a long sequence loses its start (pre) or its end (post), a short one is
    // padded before (pre) or after (post).
    const auto size = static_cast<int64_t>(seq.size());
    const int64_t keep = std::min(size, len);
    const int64_t from = q.truncating == "pre" ? size - keep : 0;
    const int64_t to = q.padding == "pre" ? len - keep : 0;
    std::fill(row.begin(), row.end(), static_cast<int32_t>(q.value));
    for (int64_t k = 0; k < keep; ++k)
      row[static_cast<size_t>(to + k)] = static_cast<int32_t>(seq[static_cast<size_t>(from + k)]);
    out.append(row.data(), row.size() * sizeof(int32_t));
  }
  Column col(engine::DType::i32, engine::Shape{len});
  col.add(Segment{out.finish(), 0, static_cast<uint64_t>(len) * 4, n, name, {}});
  return col;
}

Column npy_column(std::shared_ptr<const Bytes> bytes, uint64_t base, uint64_t size, const std::string& name,
                  const SequenceSpec* sequences, int64_t spill_bytes = kDefaultSpillBytes) {
  bool objects = false;
  NpyHeader h = parse_npy_header(*bytes, base, size, name, sequences ? &objects : nullptr);
  if (objects) {
    if (h.shape.size() != 1)
      throw InputError(name, fmt::format("an object array of shape {}", engine::Shape(h.shape).str()),
                       "lists of token ids come as an array of one dimension, one list per sample");
    return sequence_rows(bytes, base + h.data_offset, base + size, h.data_offset, name, *sequences,
                         spill_bytes);
  }
  Column col(h.dtype, engine::Shape(std::vector<int64_t>(h.shape.begin() + 1, h.shape.end())));
  Segment seg;
  seg.bytes = std::move(bytes);
  seg.offset = base + h.data_offset;
  seg.stride = col.record_bytes();
  seg.count = h.shape[0];
  seg.file = name;
  col.add(std::move(seg));
  return col;
}

}  // namespace

Column read_npy(const std::string& path, int64_t spill_bytes, const SequenceSpec* sequences) {
  auto bytes = load_file(path, spill_bytes);
  const uint64_t size = bytes->size();
  return npy_column(std::move(bytes), 0, size, file_name(path), sequences, spill_bytes);
}

ZipArchive::ZipArchive(const std::string& path) : name_(file_name(path)), bytes_(map_file(path)) {
  const uint8_t* p = bytes_->data();
  const uint64_t size = bytes_->size();
  const char* hint = "write the archive with numpy.savez or numpy.savez_compressed";
  auto damaged = [&](uint64_t at, const std::string& what) {
    return InputError(at_byte(name_, at), fmt::format("a damaged zip archive: {}", what), hint);
  };
  // The end-of-central-directory record closes the file, followed only by an archive comment of up to 64 KiB.
  if (size < 22) throw InputError(name_, fmt::format("not a zip archive ({} bytes)", size), hint);
  int64_t eocd = -1;
  const uint64_t lowest = size >= 22 + 65535 ? size - 22 - 65535 : 0;
  for (uint64_t at = size - 22 + 1; at-- > lowest;) {
    if (le32(p + at) == 0x06054b50) {
      eocd = static_cast<int64_t>(at);
      break;
    }
  }
  if (eocd < 0) {
    throw InputError(
        name_, "not a zip archive: no end-of-central-directory record",
        std::memcmp(p, "\x93NUMPY", 6) == 0 ? "this is an .npy file: set format = \"npy\"" : hint);
  }
  const uint8_t* e = p + eocd;
  uint64_t entries = le16(e + 10), cd_size = le32(e + 12), cd_offset = le32(e + 16);
  if (entries == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
    // Zip64: a locator just before the record points at the 64-bit record.
    if (eocd < 20 || le32(p + eocd - 20) != 0x07064b50)
      throw damaged(eocd, "a zip64 archive without its locator");
    const uint64_t at = le64(p + eocd - 20 + 8);
    if (!fits(at, 56, size) || le32(p + at) != 0x06064b50)
      throw damaged(at, "a bad zip64 end-of-directory record");
    entries = le64(p + at + 32);
    cd_size = le64(p + at + 40);
    cd_offset = le64(p + at + 48);
  }
  if (!fits(cd_offset, cd_size, size))
    throw damaged(cd_offset, "the central directory lies past the end of the file");
  uint64_t at = cd_offset;
  for (uint64_t k = 0; k < entries; ++k) {
    if (!fits(at, 46, size) || le32(p + at) != 0x02014b50) throw damaged(at, "a bad central directory entry");
    const uint8_t* c = p + at;
    Member m;
    m.flags = le16(c + 8);
    m.method = le16(c + 10);
    m.crc = le32(c + 16);
    m.compressed_size = le32(c + 20);
    m.size = le32(c + 24);
    const uint16_t name_len = le16(c + 28), extra_len = le16(c + 30), comment_len = le16(c + 32);
    m.local_offset = le32(c + 42);
    if (at + 46 + name_len + extra_len + comment_len > size)
      throw damaged(at, "a central directory entry overruns");
    m.name.assign(reinterpret_cast<const char*>(c + 46), name_len);
    // Zip64 sizes and offset live in extra field 0x0001, in this order, for the fields that hold 0xFFFFFFFF.
    const uint8_t* x = c + 46 + name_len;
    const uint8_t* x_end = x + extra_len;
    while (x + 4 <= x_end) {
      const uint16_t id = le16(x), len = le16(x + 2);
      if (x + 4 + len > x_end) break;
      if (id == 0x0001) {
        const uint8_t* f = x + 4;
        const uint8_t* f_end = f + len;
        if (m.size == 0xFFFFFFFF && f + 8 <= f_end) m.size = le64(f), f += 8;
        if (m.compressed_size == 0xFFFFFFFF && f + 8 <= f_end) m.compressed_size = le64(f), f += 8;
        if (m.local_offset == 0xFFFFFFFF && f + 8 <= f_end) m.local_offset = le64(f), f += 8;
      }
      x += 4 + len;
    }
    members_.push_back(std::move(m));
    at += 46 + name_len + extra_len + comment_len;
  }
}

const ZipArchive::Member* ZipArchive::find(const std::string& member_name) const {
  for (const auto& m : members_) {
    if (m.name == member_name) return &m;
  }
  return nullptr;
}

std::shared_ptr<const Bytes> ZipArchive::open(const Member& m, uint64_t* offset, int64_t spill_bytes) const {
  const uint8_t* p = bytes_->data();
  const uint64_t size = bytes_->size();
  const char* damaged = "the archive is damaged: write it again with numpy.savez or numpy.savez_compressed";
  if (m.local_offset >= size)
    throw InputError(name_,
                     fmt::format("a damaged zip archive: member '{}' starts at byte {}, past the end of the "
                                 "file ({} bytes)",
                                 clipped(m.name), m.local_offset, size),
                     damaged);
  const std::string where = at_byte(name_, m.local_offset);
  if (!fits(m.local_offset, 30, size) || le32(p + m.local_offset) != 0x04034b50) {
    throw InputError(where,
                     fmt::format("a damaged zip archive: no local header for member '{}'", clipped(m.name)),
                     damaged);
  }
  const uint64_t start = m.local_offset + 30 + le16(p + m.local_offset + 26) + le16(p + m.local_offset + 28);
  if (!fits(start, m.compressed_size, size)) {
    throw InputError(at_byte(name_, size), fmt::format("the archive ends inside member '{}'", m.name),
                     "the file is truncated: write it again");
  }
  if (m.flags & 1)
    throw InputError(name_, fmt::format("member '{}' is encrypted", clipped(m.name)),
                     "numpy reads no encrypted archive: write it with numpy.savez, without a password");
  const std::string member = fmt::format("{}/{}", name_, m.name);
  if (m.method == 0) {
    if (m.compressed_size != m.size) {
      throw InputError(where,
                       fmt::format("stored member '{}' has {} bytes but says it has {}", clipped(m.name),
                                   m.compressed_size, m.size),
                       damaged);
    }
    // numpy checks a member's CRC-32 when it reads it; so does this, once, before the bytes are used in
    // place.
    uLong crc = crc32(0, nullptr, 0);
    for (uint64_t at = 0; at < m.size;) {
      const uInt n = static_cast<uInt>(std::min<uint64_t>(m.size - at, uint64_t{1} << 30));
      crc = crc32(crc, p + start + at, n);
      at += n;
    }
    if (static_cast<uint32_t>(crc) != m.crc)
      throw InputError(
          member,
          fmt::format("CRC-32 {:08x} does not match the archive's {:08x}", static_cast<uint32_t>(crc), m.crc),
          "the archive is damaged: write it again");
    *offset = start;
    return bytes_;
  }
  if (m.method == 8) {
    // Deflate expands at most 1032 to 1: a larger size is a damaged entry (it would be reserved first).
    if (m.size / 1032 > m.compressed_size + 1)
      throw InputError(
          where,
          fmt::format("member '{}' says it inflates {} bytes to {}", m.name, m.compressed_size, m.size),
          "the archive is damaged: write it again");
    *offset = 0;
    return inflate_raw(p + start, m.compressed_size, m.size, m.crc, member, spill_bytes);
  }
  throw InputError(name_,
                   fmt::format("member '{}' uses compression method {}; only stored (0) and deflated (8) are "
                               "supported",
                               m.name, m.method),
                   "write the archive with numpy.savez or numpy.savez_compressed");
}

Column read_npz_array(const ZipArchive& zip, const std::string& key, int64_t spill_bytes,
                      const SequenceSpec* sequences) {
  const std::string wanted = key.size() > 4 && key.ends_with(".npy") ? key : key + ".npy";
  const ZipArchive::Member* m = zip.find(wanted);
  if (!m) {
    std::vector<std::string> keys;
    for (const auto& mem : zip.members()) {
      keys.push_back(mem.name.ends_with(".npy") ? mem.name.substr(0, mem.name.size() - 4) : mem.name);
    }
    std::string listed;
    for (const auto& k : keys) listed += (listed.empty() ? "" : ", ") + k;
    std::string hint = did_you_mean(key, keys);
    throw InputError(zip.name(),
                     fmt::format("has no array '{}'; its arrays: {}", key, listed.empty() ? "none" : listed),
                     hint.empty() ? "set x_key / y_key to the archive's array names" : hint);
  }
  uint64_t offset = 0;
  auto bytes = zip.open(*m, &offset, spill_bytes);
  return npy_column(std::move(bytes), offset, m->size, fmt::format("{}/{}", zip.name(), m->name), sequences,
                    spill_bytes);
}

std::shared_ptr<const Bytes> padded_sequences_npy(const std::string& path, const std::string& npz_key,
                                                  const SequenceSpec& sequences) {
  std::shared_ptr<const Bytes> bytes;
  uint64_t base = 0, size = 0;
  std::string name = file_name(path);
  if (npz_key.empty()) {
    bytes = load_file(path);
    size = bytes->size();
  } else {
    const ZipArchive zip(path);
    const ZipArchive::Member* m = zip.find(npz_key + ".npy");
    if (!m) return nullptr;
    bytes = zip.open(*m, &base, kDefaultSpillBytes);
    size = m->size;
    name = fmt::format("{}/{}", zip.name(), m->name);
  }
  if (size < 8 || std::memcmp(bytes->data() + base, "\x93NUMPY", 6) != 0) return nullptr;
  bool objects = false;
  parse_npy_header(*bytes, base, size, name, &objects);
  if (!objects) return nullptr;
  const Column col = npy_column(bytes, base, size, name, &sequences);
  const Segment& seg = col.segments().at(0);
  std::string header = fmt::format("{{'descr': '<i4', 'fortran_order': False, 'shape': ({}, {}), }}",
                                   seg.count, sequences.maxlen);
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::vector<uint8_t> out = {0x93,
                              'N',
                              'U',
                              'M',
                              'P',
                              'Y',
                              1,
                              0,
                              static_cast<uint8_t>(header.size() & 0xFF),
                              static_cast<uint8_t>(header.size() >> 8)};
  out.insert(out.end(), header.begin(), header.end());
  const uint8_t* rows = seg.bytes->data() + seg.offset;
  out.insert(out.end(), rows, rows + static_cast<size_t>(seg.count) * seg.stride);
  return Bytes::from_vector(std::move(out));
}

}  // namespace trainer::formats
