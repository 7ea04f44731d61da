// A Python pickle read as data, never run: the opcodes of protocols 2 to 5 that build None, booleans,
// integers, floats, strings, bytes, tuples, lists and dicts, and the few callables that numpy arrays and
// Python 3's bytes at protocol 2 are rebuilt with (numpy's _reconstruct, _frombuffer and dtype, and
// _codecs.encode). Any other callable, or an opcode outside that set, is an InputError at its byte: a data
// file has no business calling anything else. This is how the Python version of CIFAR-10 and CIFAR-100 (the
// files Keras's cifar10.load_data and cifar100.load_data keep) is read.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/ir/dtype.h"
#include "formats/data_bytes.h"

namespace trainer::formats::pickle {

struct Value;
using Ref = std::shared_ptr<const Value>;

struct Value {
  enum class Kind { none, boolean, integer, real, bytes, text, tuple, list, dict, global, call };
  Kind kind = Kind::none;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  // bytes and text (UTF-8): `size` bytes at `offset` of `holder` (the file itself, or a buffer of its own).
  std::shared_ptr<const Bytes> holder;
  uint64_t offset = 0, size = 0;
  // tuple and list: the items; dict: keys and values alternating; call: the arguments tuple and, once a BUILD
  // gave it, the state.
  std::vector<Ref> items;
  // A list of integers alone holds them here, packed, and no items (a list of token ids).
  std::vector<int64_t> ints;
  std::string name;  // global and call: "module.name" of the callable
  Ref state;
  int depth = 1;  // of nesting, bounded so that no value is too deep to destroy or walk
  // Placed in another value: no longer changed (so depths stay true, and no value holds itself).
  bool closed = false;
  uint64_t at = 0;  // byte of the file where the value was made, for messages

  std::string_view view() const {
    return {reinterpret_cast<const char*>(holder->data() + offset), static_cast<size_t>(size)};
  }
  bool is_string() const { return kind == Kind::bytes || kind == Kind::text; }
  // The dict's value under a string key (bytes or text), or null.
  const Value* find(std::string_view key) const;
};

// The value the pickle in bytes [begin, end) of `file` builds (all of it by default). `name` names the file
// in messages, at bytes counted from `report_from` (the start of what the name names).
Ref load(std::shared_ptr<const Bytes> file, const std::string& name, uint64_t begin = 0,
         uint64_t end = UINT64_MAX, uint64_t report_from = 0);

// The items of a numpy array of Python objects (dtype object, one dimension), as numpy pickles it (after an
// .npy header, or in a pickle): an InputError naming `what` otherwise.
std::vector<Ref> object_items(const Value& v, const std::string& file, const std::string& what);

// A numpy array a pickle holds (a call of _reconstruct with its state, or of _frombuffer): its element type,
// shape and C-ordered little-endian bytes, in place in the holder. Other element types, byte orders, Fortran
// order and object arrays are InputErrors naming `what` (the dict key, say).
struct Array {
  engine::DType dtype = engine::DType::u8;
  std::vector<int64_t> shape;
  std::shared_ptr<const Bytes> holder;
  uint64_t offset = 0, size = 0;
};
Array as_array(const Value& v, const std::string& file, const std::string& what);

// The elements of an array of u8, i32 or i64 as integers into *out; false (and *out empty) for another
// element type.
bool array_integers(const Array& a, std::vector<int64_t>* out);

}  // namespace trainer::formats::pickle
