// NPY arrays and NPZ archives (zip files of .npy members, stored or deflated) as dataset columns.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/util/error.h"
#include "formats/data_array.h"

namespace trainer::formats {

struct SequenceSpec;  // model_spec.h

// A parsed .npy header.
struct NpyHeader {
  engine::DType dtype = engine::DType::u8;
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;  // from the start of the .npy bytes
};

// The dict of an .npy header as numpy writes it: {'descr': '<f4', 'fortran_order': False, 'shape': (60000,
// 28, 28), }. Other keys (numpy refuses them too), a structured dtype or a bad shape are an InputError at
// `where`.
struct NpyDict {
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
};
NpyDict parse_npy_dict(std::string_view text, const std::string& where);
// The dtype an .npy descr names ('<f4', '|u1', ...): uint8 and bool, int32, int64, float32, float64,
// little-endian; anything else is an InputError at `where` with a hint.
engine::DType npy_dtype(const std::string& descr, const std::string& where);

// The error for an NPY format version other than 1, 2 and 3 (bytes 6 and 7 of file `name`).
InputError npy_version_error(const std::string& name, int major, int minor);

// Parses the header of the .npy bytes [base, base + size) of `bytes` (v1, v2 or v3; little-endian u1, b1, i4,
// i8, f4, f8; C order). Anything else is an InputError naming `name` and the byte offset.
// With `objects`, an array of Python objects (descr 'O', whose pickle follows the header) sets *objects and
// returns its header without a dtype or size check; without it, such an array is an InputError.
NpyHeader parse_npy_header(const Bytes& bytes, uint64_t base, uint64_t size, const std::string& name,
                           bool* objects = nullptr);

// The array of a .npy file (mapped in place, or decompressed once when gzipped) as a column of its first
// dimension. With `sequences` (its maxlen set), an array of Python lists of token ids (numpy's object arrays,
// as keras.datasets' imdb.npz holds them) becomes int32 rows of maxlen ids, mapped and padded as it says; the
// pickle is read as data (data_pickle.h). Without it, such an array is an InputError with a hint.
Column read_npy(const std::string& path, int64_t spill_bytes = kDefaultSpillBytes,
                const SequenceSpec* sequences = nullptr);

// For trainer predict: the .npy file at `path` (or, with `npz_key`, that array of the .npz there) when it is
// an array of Python lists of token ids, as an NPY of int32 [N, maxlen] in memory, mapped and padded as
// `sequences` says (read_npy); null when it is an array of another kind, which is read as it is.
std::shared_ptr<const Bytes> padded_sequences_npy(const std::string& path, const std::string& npz_key,
                                                  const SequenceSpec& sequences);

// A zip archive's members, found through its central directory (zip64 included).
class ZipArchive {
 public:
  struct Member {
    std::string name;
    uint16_t method = 0;  // 0 stored, 8 deflated
    uint16_t flags = 0;
    uint32_t crc = 0;
    uint64_t compressed_size = 0, size = 0, local_offset = 0;
  };
  explicit ZipArchive(const std::string& path);
  const std::string& name() const { return name_; }
  const std::vector<Member>& members() const { return members_; }
  const Member* find(const std::string& member_name) const;
  // A member's bytes: a view into the mapped archive when stored, its inflated copy when deflated. *offset
  // receives where the member starts in the returned bytes.
  std::shared_ptr<const Bytes> open(const Member& m, uint64_t* offset, int64_t spill_bytes) const;

 private:
  std::string name_;
  std::shared_ptr<const Bytes> bytes_;
  std::vector<Member> members_;
};

// Array `key` of an .npz archive ("x" reads member "x.npy"); a missing key is an InputError listing the keys.
Column read_npz_array(const ZipArchive& zip, const std::string& key, int64_t spill_bytes = kDefaultSpillBytes,
                      const SequenceSpec* sequences = nullptr);

}  // namespace trainer::formats
