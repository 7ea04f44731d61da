// The pickle reader: a stack machine over the data-building opcodes, with the memo, marks, and a short list
// of callables it knows the results of. Containers are closed once placed in another (no value can then grow
// deeper, and no structure can hold itself), nesting is bounded, and so is the number of values made.
#include "formats/data_pickle.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <unordered_map>

#include "engine/util/error.h"
#include "formats/datasets.h"

namespace trainer::formats::pickle {

namespace {

constexpr int kMaxDepth = 64;
constexpr int64_t kMaxValues = 2'000'000;
// Integers (packed into lists of token ids) are cheaper, and come by the million in a dataset of texts.
constexpr int64_t kMaxIntegers = 64'000'000;
// Entries of the stack, the memo and the marks: real pickles hold a batch of 1000 items at a time.
constexpr size_t kMaxEntries = 4'000'000;

using MRef = std::shared_ptr<Value>;

const char* const kKnownGlobals[] = {"numpy.core.multiarray._reconstruct",
                                     "numpy._core.multiarray._reconstruct",
                                     "numpy.ndarray",
                                     "numpy.dtype",
                                     "numpy.core.numeric._frombuffer",
                                     "numpy._core.numeric._frombuffer",
                                     "_codecs.encode",
                                     "__builtin__.bytes",
                                     "builtins.bytes"};

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::none:
      return "None";
    case Value::Kind::boolean:
      return "a boolean";
    case Value::Kind::integer:
      return "an integer";
    case Value::Kind::real:
      return "a float";
    case Value::Kind::bytes:
      return "bytes";
    case Value::Kind::text:
      return "a string";
    case Value::Kind::tuple:
      return "a tuple";
    case Value::Kind::list:
      return "a list";
    case Value::Kind::dict:
      return "a dict";
    case Value::Kind::global:
      return "a callable";
    case Value::Kind::call:
      return "an object";
  }
  return "a value";
}

struct Reader {
  Reader(std::shared_ptr<const Bytes> f, const std::string& file_name, uint64_t begin, uint64_t end,
         uint64_t report)
      : file(std::move(f)),
        name(file_name),
        p(file->data() + begin),
        n(end - begin),
        base(begin),
        report_base(report) {}
  std::shared_ptr<const Bytes> file;
  const std::string& name;
  const uint8_t* p = nullptr;
  uint64_t n = 0, pos = 0, op_at = 0;
  uint64_t base = 0;         // where p is in the file's bytes
  uint64_t report_base = 0;  // where p is in what `name` names
  std::vector<MRef> stack;
  std::vector<size_t> marks;
  std::unordered_map<uint64_t, MRef> memo;
  int64_t made = 0, integers_made = 0;
  uint64_t decoded = 0;  // bytes _codecs.encode made

  [[noreturn]] void fail(const std::string& what, const std::string& hint = "") const {
    throw InputError(at_byte(name, report_base + op_at), what,
                     hint.empty() ? "the file is not a pickle of data, or it is damaged" : hint);
  }
  const uint8_t* take(uint64_t k) {
    if (k > n - pos)
      fail(
          fmt::format("the pickle ends inside its opcode at byte {} (it needs {} bytes more, "
                      "and {} are left)",
                      report_base + op_at, k, n - pos));
    const uint8_t* at = p + pos;
    pos += k;
    return at;
  }
  uint64_t le(int bytes) {
    const uint8_t* b = take(static_cast<uint64_t>(bytes));
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | b[i];
    return v;
  }
  // Counts values made (or copied) against the caps, so that no small file takes much memory or time.
  void charge(int64_t values, bool integers = false) {
    if (integers ? (integers_made += values) > kMaxIntegers : (made += values) > kMaxValues)
      fail(fmt::format("the pickle builds more than {} {}", integers ? kMaxIntegers : kMaxValues,
                       integers ? "integers" : "values"),
           "a data file holds arrays, lists of numbers and short lists of others; this file is not one");
  }
  void entries() {
    if (stack.size() + memo.size() + marks.size() >= kMaxEntries)
      fail(fmt::format("the pickle keeps more than {} values at once on its stack and memo", kMaxEntries),
           "a data file builds its lists a batch at a time; this file is not one");
  }
  MRef make(Value::Kind k) {
    charge(1, k == Value::Kind::integer);
    auto v = std::make_shared<Value>();
    v->kind = k;
    v->at = report_base + op_at;
    return v;
  }
  MRef string_value(Value::Kind k, uint64_t size) {
    MRef v = make(k);
    v->holder = file;
    v->offset = base + pos;
    take(size);
    v->size = size;
    return v;
  }
  void push(MRef v) {
    entries();
    stack.push_back(std::move(v));
  }
  MRef pop() {
    if (stack.size() <= (marks.empty() ? 0 : marks.back()))
      fail("the pickle takes a value from an empty stack");
    MRef v = std::move(stack.back());
    stack.pop_back();
    return v;
  }
  MRef& top() {
    if (stack.size() <= (marks.empty() ? 0 : marks.back())) fail("the pickle uses a value of an empty stack");
    return stack.back();
  }
  // The values since the last mark, which is dropped.
  std::vector<MRef> pop_mark() {
    if (marks.empty()) fail("the pickle closes a mark it never set");
    const size_t from = marks.back();
    marks.pop_back();
    std::vector<MRef> out(std::make_move_iterator(stack.begin() + static_cast<std::ptrdiff_t>(from)),
                          std::make_move_iterator(stack.end()));
    stack.resize(from);
    return out;
  }
  // Places `child` in `parent`: the child is closed from then on, and the parent's depth follows it.
  void adopt(Value& parent, const MRef& child) {
    // A list of integers packs them (token ids come by the million); anything else among them unpacks it.
    if (parent.kind == Value::Kind::list && child->kind == Value::Kind::integer && parent.items.empty()) {
      parent.ints.push_back(child->integer);
      parent.depth = std::max(parent.depth, 2);
      return;
    }
    if (!parent.ints.empty()) {
      for (int64_t i : parent.ints) {
        MRef v = make(Value::Kind::integer);
        v->integer = i;
        v->closed = true;
        parent.items.push_back(v);
      }
      parent.ints.clear();
    }
    if (child.get() == &parent)
      fail("the pickle puts a value inside itself", "data files hold no such structure");
    child->closed = true;
    parent.depth = std::max(parent.depth, child->depth + 1);
    if (parent.depth > kMaxDepth)
      fail(fmt::format("the pickle nests values more than {} deep", kMaxDepth), "data files are not so deep");
    parent.items.push_back(child);
  }
  Value& open_container(const MRef& v, Value::Kind want, const char* op) {
    if (v->kind != want)
      fail(fmt::format("the pickle's {} adds to {}, which is not {}", op, kind_name(v->kind),
                       kind_name(want)));
    if (v->closed)
      fail(fmt::format("the pickle's {} changes {} already placed in another value", op, kind_name(v->kind)),
           "data files hold no such structure");
    return *v;
  }
  MRef tuple_of(std::vector<MRef> items) {
    MRef t = make(Value::Kind::tuple);
    for (MRef& i : items) adopt(*t, i);
    return t;
  }
  std::string text_line() {
    const uint64_t start = pos;
    while (pos < n && p[pos] != '\n') {
      if (pos - start > 256) fail("the pickle names a callable longer than 256 characters");
      ++pos;
    }
    if (pos >= n) fail("the pickle ends inside a callable's name");
    std::string s(reinterpret_cast<const char*>(p + start), pos - start);
    ++pos;
    return s;
  }
  MRef global(const std::string& module, const std::string& attr) {
    const std::string full = module + "." + attr;
    if (std::find(std::begin(kKnownGlobals), std::end(kKnownGlobals), full) == std::end(kKnownGlobals))
      fail(fmt::format("the pickle calls {}, which no data file needs", full),
           "trainer reads pickles of arrays, lists, dicts, numbers and strings, and runs nothing in them");
    MRef g = make(Value::Kind::global);
    g->name = full;
    return g;
  }
  // _codecs.encode(text, "latin1"): how Python 3 pickles bytes at protocol 2.
  MRef latin1(const Value& args) {
    if (args.items.size() != 2 || args.items[0]->kind != Value::Kind::text || !args.items[1]->is_string() ||
        (args.items[1]->view() != "latin1" && args.items[1]->view() != "latin-1"))
      fail("the pickle calls _codecs.encode other than with a string and 'latin1'");
    const std::string_view s = args.items[0]->view();
    // Each string of the file is decoded once in a real pickle: more decoding than the file has bytes is a
    // memoized string decoded over and over.
    decoded += s.size();
    if (decoded > n)
      fail("the pickle decodes more bytes than it holds", "a data file decodes each of its strings once");
    std::vector<uint8_t> out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<uint8_t>(s[i]);
      if (c < 0x80) {
        out.push_back(c);
      } else if ((c & 0xE0) == 0xC0 && c <= 0xC3 && i + 1 < s.size() &&
                 (static_cast<uint8_t>(s[i + 1]) & 0xC0) == 0x80) {
        out.push_back(static_cast<uint8_t>(((c & 0x1F) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3F)));
        ++i;
      } else {
        fail("the pickle encodes a string as latin1 whose characters latin1 does not hold");
      }
    }
    MRef v = make(Value::Kind::bytes);
    v->size = out.size();
    v->holder = Bytes::from_vector(std::move(out));
    return v;
  }

  Ref run() {
    static const MRef none = std::make_shared<Value>();
    for (;;) {
      op_at = pos;
      const uint8_t op = *take(1);
      switch (op) {
        case 0x80: {  // PROTO
          const uint8_t v = *take(1);
          if (v < 2 || v > 5) fail(fmt::format("the pickle's protocol is {}; trainer reads 2 to 5", v));
          break;
        }
        case 0x95:
          take(8);
          break;     // FRAME: its length alone
        case '.': {  // STOP
          if (stack.size() != 1 || !marks.empty()) fail("the pickle stops with other than one value built");
          return stack.back();
        }
        case '(':
          entries();
          marks.push_back(stack.size());
          break;  // MARK
        case '0':
          pop();
          break;  // POP
        case '1':
          pop_mark();
          break;  // POP_MARK
        case 'N':
          push(none);
          break;
        case 0x88:
        case 0x89: {  // NEWTRUE, NEWFALSE
          MRef v = make(Value::Kind::boolean);
          v->boolean = op == 0x88;
          push(v);
          break;
        }
        case 'J':
        case 'K':
        case 'M': {  // BININT, BININT1, BININT2
          MRef v = make(Value::Kind::integer);
          v->integer = op == 'J'   ? static_cast<int32_t>(static_cast<uint32_t>(le(4)))
                       : op == 'K' ? static_cast<int64_t>(le(1))
                                   : static_cast<int64_t>(le(2));
          push(v);
          break;
        }
        case 0x8a: {  // LONG1
          const uint8_t k = *take(1);
          if (k > 8) fail("the pickle holds an integer wider than 64 bits");
          uint64_t u = k ? le(k) : 0;
          if (k > 0 && k < 8 && (u >> (8 * k - 1)) & 1) u |= ~uint64_t{0} << (8 * k);  // sign
          MRef v = make(Value::Kind::integer);
          v->integer = static_cast<int64_t>(u);
          push(v);
          break;
        }
        case 'G': {  // BINFLOAT, big-endian
          const uint8_t* b = take(8);
          uint64_t u = 0;
          for (int i = 0; i < 8; ++i) u = (u << 8) | b[i];
          MRef v = make(Value::Kind::real);
          v->real = std::bit_cast<double>(u);
          push(v);
          break;
        }
        case 'U':
          push(string_value(Value::Kind::bytes, le(1)));
          break;  // SHORT_BINSTRING (Python 2 str)
        case 'T':
          push(string_value(Value::Kind::bytes, le(4)));
          break;  // BINSTRING
        case 'C':
          push(string_value(Value::Kind::bytes, le(1)));
          break;  // SHORT_BINBYTES
        case 'B':
          push(string_value(Value::Kind::bytes, le(4)));
          break;    // BINBYTES
        case 0x8e:  // BINBYTES8
        case 0x96:
          push(string_value(Value::Kind::bytes, le(8)));
          break;  // BYTEARRAY8
        case 0x8c:
          push(string_value(Value::Kind::text, le(1)));
          break;  // SHORT_BINUNICODE
        case 'X':
          push(string_value(Value::Kind::text, le(4)));
          break;  // BINUNICODE
        case 0x8d:
          push(string_value(Value::Kind::text, le(8)));
          break;  // BINUNICODE8
        case ')':
          push(make(Value::Kind::tuple));
          break;  // EMPTY_TUPLE
        case ']':
          push(make(Value::Kind::list));
          break;  // EMPTY_LIST
        case '}':
          push(make(Value::Kind::dict));
          break;  // EMPTY_DICT
        case 't':
          push(tuple_of(pop_mark()));
          break;  // TUPLE
        case 0x85:
        case 0x86:
        case 0x87: {  // TUPLE1, TUPLE2, TUPLE3
          std::vector<MRef> items(static_cast<size_t>(op - 0x84));
          for (size_t i = items.size(); i-- > 0;) items[i] = pop();
          push(tuple_of(std::move(items)));
          break;
        }
        case 'l': {  // LIST
          MRef l = make(Value::Kind::list);
          for (MRef& i : pop_mark()) adopt(*l, i);
          push(l);
          break;
        }
        case 'd': {  // DICT
          std::vector<MRef> kv = pop_mark();
          if (kv.size() % 2) fail("the pickle builds a dict of an odd number of keys and values");
          MRef d = make(Value::Kind::dict);
          for (MRef& i : kv) adopt(*d, i);
          push(d);
          break;
        }
        case 'a': {  // APPEND
          MRef v = pop();
          adopt(open_container(top(), Value::Kind::list, "APPEND"), v);
          break;
        }
        case 'e': {  // APPENDS
          std::vector<MRef> items = pop_mark();
          Value& l = open_container(top(), Value::Kind::list, "APPENDS");
          for (MRef& i : items) adopt(l, i);
          break;
        }
        case 's': {  // SETITEM
          MRef v = pop(), k = pop();
          Value& d = open_container(top(), Value::Kind::dict, "SETITEM");
          adopt(d, k);
          adopt(d, v);
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<MRef> kv = pop_mark();
          if (kv.size() % 2) fail("the pickle sets an odd number of keys and values");
          Value& d = open_container(top(), Value::Kind::dict, "SETITEMS");
          for (MRef& i : kv) adopt(d, i);
          break;
        }
        case 'q':
          entries();
          memo[le(1)] = top();
          break;  // BINPUT
        case 'r':
          entries();
          memo[le(4)] = top();
          break;  // LONG_BINPUT
        case 0x94:
          entries();
          memo[memo.size()] = top();
          break;     // MEMOIZE
        case 'h':    // BINGET
        case 'j': {  // LONG_BINGET
          const uint64_t k = le(op == 'h' ? 1 : 4);
          auto it = memo.find(k);
          if (it == memo.end()) fail(fmt::format("the pickle recalls memo {}, which it never stored", k));
          push(it->second);
          break;
        }
        case 'c': {  // GLOBAL
          const std::string module = text_line();
          const std::string attr = text_line();
          push(global(module, attr));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          MRef attr = pop(), module = pop();
          if (!module->is_string() || !attr->is_string())
            fail("the pickle names a callable by other than strings");
          push(global(std::string(module->view()), std::string(attr->view())));
          break;
        }
        case 'R': {  // REDUCE
          MRef args = pop(), fn = pop();
          if (fn->kind != Value::Kind::global) fail(fmt::format("the pickle calls {}", kind_name(fn->kind)));
          if (args->kind != Value::Kind::tuple) fail("the pickle calls a callable with other than a tuple");
          if (fn->name == "_codecs.encode") {
            push(latin1(*args));
            break;
          }
          // bytes(): how Python 3 pickles empty bytes at protocol 2.
          if (fn->name == "__builtin__.bytes" || fn->name == "builtins.bytes") {
            if (!args->items.empty()) fail("the pickle calls bytes with arguments");
            MRef b = make(Value::Kind::bytes);
            b->holder = file;
            push(b);
            break;
          }
          MRef c = make(Value::Kind::call);
          c->name = fn->name;
          charge(static_cast<int64_t>(args->items.size()));  // a memoized tuple may be used over and over
          c->items = args->items;
          c->depth = args->depth;
          push(c);
          break;
        }
        case 'b': {  // BUILD
          MRef st = pop();
          MRef& obj = top();
          if (obj->kind != Value::Kind::call || obj->state || obj->closed || st.get() == obj.get())
            fail("the pickle sets the state of other than an object it just made");
          st->closed = true;
          obj->depth = std::max(obj->depth, st->depth + 1);
          if (obj->depth > kMaxDepth)
            fail(fmt::format("the pickle nests values more than {} deep", kMaxDepth),
                 "data files are not so deep");
          obj->state = st;
          break;
        }
        default:
          fail(fmt::format("the pickle holds opcode 0x{:02x}, which trainer does not read", op),
               "trainer reads the data-building opcodes of pickle protocols 2 to 5 (pickle.dump of arrays, "
               "lists, dicts, numbers and strings)");
      }
    }
  }
};

std::string clipped_key(const std::string& s) {
  return s.size() > 40 ? s.substr(0, 40) + "..." : s;
}

}  // namespace

const Value* Value::find(std::string_view key) const {
  if (kind != Kind::dict) return nullptr;
  for (size_t i = 0; i + 1 < items.size(); i += 2)
    if (items[i]->is_string() && items[i]->view() == key) return items[i + 1].get();
  return nullptr;
}

Ref load(std::shared_ptr<const Bytes> file, const std::string& name, uint64_t begin, uint64_t end,
         uint64_t report_from) {
  end = std::min<uint64_t>(end, file->size());
  if (begin > end) begin = end;
  Reader r(std::move(file), name, begin, end, report_from);
  return r.run();
}

namespace {

[[noreturn]] void not_an_array(const Value& v, const std::string& file, const std::string& what,
                               const std::string& why) {
  throw InputError(at_byte(file, v.at), fmt::format("{} is {}", what, why),
                   "save it as a numpy array of numbers (as numpy pickles one)");
}

}  // namespace

Array as_array(const Value& v, const std::string& file, const std::string& what) {
  auto fail = [&](const std::string& why) { not_an_array(v, file, what, why); };
  if (v.kind != Value::Kind::call) {
    fail(fmt::format("{}, not a numpy array", kind_name(v.kind)));
  }
  const Value* dtype = nullptr;
  const Value* shape = nullptr;
  const Value* data = nullptr;
  bool fortran = false;
  if (v.name.ends_with("._reconstruct")) {
    // ndarray.__reduce__: _reconstruct(ndarray, (0,), b'b'), then its state (version, shape, dtype,
    // is_fortran, raw data); version 0 leaves the version out.
    const Value* st = v.state.get();
    if (!st || st->kind != Value::Kind::tuple || (st->items.size() != 5 && st->items.size() != 4))
      fail("a numpy array without the state numpy pickles");
    const size_t o = st->items.size() == 5 ? 1 : 0;
    shape = st->items[o].get();
    dtype = st->items[o + 1].get();
    const Value& f = *st->items[o + 2];
    fortran = (f.kind == Value::Kind::boolean && f.boolean) || (f.kind == Value::Kind::integer && f.integer);
    data = st->items[o + 3].get();
  } else if (v.name.ends_with("._frombuffer")) {
    // Protocol 5: _frombuffer(buffer, dtype, shape, order).
    if (v.items.size() != 4) fail("a numpy array without the arguments numpy pickles");
    data = v.items[0].get();
    dtype = v.items[1].get();
    shape = v.items[2].get();
    fortran = v.items[3]->is_string() && v.items[3]->view() == "F";
  } else {
    fail(fmt::format("an object of {}, not a numpy array", v.name));
  }
  if (data->kind != Value::Kind::bytes)
    fail(data->kind == Value::Kind::list
             ? "a numpy array of Python objects (lists of different lengths?)"
             : fmt::format("a numpy array whose data is {}", kind_name(data->kind)));
  if (dtype->kind != Value::Kind::call || dtype->name != "numpy.dtype" || dtype->items.empty() ||
      !dtype->items[0]->is_string())
    fail("a numpy array without a dtype");
  const std::string descr(dtype->items[0]->view());
  char order = '|';
  if (dtype->state && dtype->state->kind == Value::Kind::tuple && dtype->state->items.size() > 1 &&
      dtype->state->items[1]->is_string() && dtype->state->items[1]->size == 1)
    order = dtype->state->items[1]->view()[0];
  Array a;
  struct Known {
    const char* descr;
    engine::DType dtype;
  };
  static constexpr std::array<Known, 6> kKnown = {{{"u1", engine::DType::u8},
                                                   {"b1", engine::DType::boolean},
                                                   {"i4", engine::DType::i32},
                                                   {"i8", engine::DType::i64},
                                                   {"f4", engine::DType::f32},
                                                   {"f8", engine::DType::f64}}};
  const auto* k =
      std::find_if(kKnown.begin(), kKnown.end(), [&](const Known& x) { return descr == x.descr; });
  if (k == kKnown.end())
    fail(fmt::format("a numpy array of {}, which trainer does not read (it reads u1, b1, i4, i8, f4 and f8)",
                     clipped_key(descr)));
  a.dtype = k->dtype;
  if (order == '>' && engine::dtype_bytes(a.dtype) > 1) fail("a big-endian numpy array");
  if (shape->kind != Value::Kind::tuple) fail("a numpy array without a shape");
  uint64_t count = 1;
  for (const Ref& d : shape->items) {
    if (d->kind != Value::Kind::integer || d->integer < 0) fail("a numpy array with a bad shape");
    a.shape.push_back(d->integer);
    if (d->integer && count > std::numeric_limits<uint64_t>::max() / 16 / static_cast<uint64_t>(d->integer))
      fail("a numpy array too large to be held");
    count *= static_cast<uint64_t>(d->integer);
  }
  if (fortran && a.shape.size() > 1 && count > 1)
    throw InputError(at_byte(file, v.at),
                     fmt::format("{} is a numpy array in Fortran (column-major) order", what),
                     "save a C-ordered copy: numpy.ascontiguousarray(x)");
  if (count * engine::dtype_bytes(a.dtype) != data->size)
    fail(fmt::format("a numpy array of shape ({}) whose data is {} bytes, not {}", fmt::join(a.shape, ", "),
                     data->size, count * engine::dtype_bytes(a.dtype)));
  a.holder = data->holder;
  a.offset = data->offset;
  a.size = data->size;
  return a;
}

}  // namespace trainer::formats::pickle

namespace trainer::formats::pickle {

std::vector<Ref> object_items(const Value& v, const std::string& file, const std::string& what) {
  auto fail = [&](const std::string& why) { not_an_array(v, file, what, why); };
  if (v.kind != Value::Kind::call || !v.name.ends_with("._reconstruct"))
    fail(v.kind == Value::Kind::call ? fmt::format("an object of {}, not a numpy array", v.name)
                                     : fmt::format("{}, not a numpy array", kind_name(v.kind)));
  const Value* st = v.state.get();
  if (!st || st->kind != Value::Kind::tuple || (st->items.size() != 5 && st->items.size() != 4))
    fail("a numpy array without the state numpy pickles");
  const size_t o = st->items.size() == 5 ? 1 : 0;
  const Value& shape = *st->items[o];
  const Value& dtype = *st->items[o + 1];
  const Value& data = *st->items[o + 3];
  if (dtype.kind != Value::Kind::call || dtype.name != "numpy.dtype" || dtype.items.empty() ||
      !dtype.items[0]->is_string() || !dtype.items[0]->view().starts_with("O"))
    fail("a numpy array of numbers, not of Python objects");
  if (shape.kind != Value::Kind::tuple || shape.items.size() != 1 ||
      shape.items[0]->kind != Value::Kind::integer)
    fail("a numpy array of Python objects of other than one dimension");
  if (data.kind != Value::Kind::list) fail("a numpy array of Python objects without its list of objects");
  if (!data.ints.empty()) fail("a numpy array of Python numbers, not of lists of token ids");
  if (static_cast<int64_t>(data.items.size()) != shape.items[0]->integer)
    fail(fmt::format("a numpy array of {} Python objects whose list holds {}", shape.items[0]->integer,
                     data.items.size()));
  return data.items;
}

bool array_integers(const Array& a, std::vector<int64_t>* out) {
  out->clear();
  const size_t w = engine::dtype_bytes(a.dtype);
  if (a.dtype != engine::DType::u8 && a.dtype != engine::DType::i32 && a.dtype != engine::DType::i64)
    return false;
  out->reserve(a.size / w);
  for (uint64_t at = 0; at + w <= a.size; at += w) {
    const uint8_t* b = a.holder->data() + a.offset + at;
    out->push_back(w == 1 ? b[0] : w == 4 ? static_cast<int32_t>(le32(b)) : static_cast<int64_t>(le64(b)));
  }
  return true;
}

}  // namespace trainer::formats::pickle
