// Dataset sources: file resolution, format choice, and pairing sample files with label files.
#include "formats/datasets.h"

#include <dirent.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "engine/util/error.h"
#include "formats/data_array.h"
#include "formats/data_cifar.h"
#include "formats/data_csv.h"
#include "formats/data_idx.h"
#include "formats/data_npy.h"

namespace trainer::formats {

namespace {

bool has_glob(const std::string& s) {
  return s.find_first_of("*?[") != std::string::npos;
}

// Orders names as people count: runs of digits compare by value.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && std::isdigit(static_cast<unsigned char>(a[i2]))) ++i2;
      while (j2 < b.size() && std::isdigit(static_cast<unsigned char>(b[j2]))) ++j2;
      std::string_view da(a.data() + i, i2 - i), db(b.data() + j, j2 - j);
      while (da.size() > 1 && da[0] == '0') da.remove_prefix(1);
      while (db.size() > 1 && db[0] == '0') db.remove_prefix(1);
      if (da.size() != db.size()) return da.size() < db.size();
      if (da != db) return da < db;
      i = i2;
      j = j2;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

std::string where_in_spec(const SourcePos& pos) {
  return pos.file.empty() ? std::string("data") : pos.str();
}

std::string directory_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

// A hint for a missing file: the nearest name in its folder, or what the folder is.
std::string missing_file_hint(const std::string& path) {
  const std::string dir = directory_of(path);
  DIR* d = opendir(dir.c_str());
  if (!d)
    return fmt::format("the folder {} does not exist either; relative paths start at the spec's folder", dir);
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  std::string hint = did_you_mean(file_name(path), names);
  return hint.empty() ? "relative paths start at the spec's folder" : hint;
}

std::string describe_files(const std::vector<std::string>& files) {
  if (files.size() == 1) return file_name(files[0]);
  return fmt::format("{} .. {} ({} files)", file_name(files.front()), file_name(files.back()), files.size());
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

std::vector<std::string> resolve_data_files(const std::vector<std::string>& patterns,
                                            const std::string& base_dir, const SourcePos& pos) {
  std::vector<std::string> out;
  for (const auto& pat : patterns) {
    const std::string full = pat.starts_with('/') || base_dir.empty() ? pat : base_dir + "/" + pat;
    const std::string looked = full == pat ? "" : fmt::format(" (looked for {})", full);
    if (!has_glob(pat)) {
      if (!is_regular_file(full)) {
        struct stat st {};
        const bool exists = stat(full.c_str(), &st) == 0;
        throw InputError(
            where_in_spec(pos),
            exists ? fmt::format("data file '{}' is not a regular file", pat)
                   : fmt::format("data file '{}' does not exist{}", pat, looked),
            exists ? "name a file, or a glob such as \"data_batch_*.bin\"" : missing_file_hint(full));
      }
      out.push_back(full);
      continue;
    }
    glob_t g{};
    int rc = glob(full.c_str(), 0, nullptr, &g);
    std::vector<std::string> matches;
    if (rc == 0) {
      for (size_t k = 0; k < g.gl_pathc; ++k) {
        if (is_regular_file(g.gl_pathv[k])) matches.emplace_back(g.gl_pathv[k]);
      }
    }
    globfree(&g);
    if (matches.empty()) {
      throw InputError(where_in_spec(pos), fmt::format("no data file matches '{}'{}", pat, looked),
                       looked.empty() ? "" : "relative paths start at the spec's folder");
    }
    std::sort(matches.begin(), matches.end(), natural_less);
    out.insert(out.end(), matches.begin(), matches.end());
  }
  return out;
}

std::string data_format_from_name(const std::string& path) {
  std::string n = file_name(path);
  for (char& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (n.ends_with(".gz")) n.resize(n.size() - 3);
  if (n.ends_with(".npy")) return "npy";
  if (n.ends_with(".npz")) return "npz";
  if (n.ends_with(".csv")) return "csv";
  if (n.ends_with(".idx") || n.ends_with("-ubyte") || n.ends_with(".ubyte") ||
      n.find("idx1") != std::string::npos || n.find("idx3") != std::string::npos) {
    return "idx";
  }
  if (n.ends_with(".bin")) return "cifar10";
  return "";
}

std::shared_ptr<const engine::data::Dataset> open_dataset(const DataSource& src, const std::string& base_dir,
                                                          const DatasetOptions& options) {
  const std::string where = where_in_spec(src.pos);
  if (src.x.empty()) throw InputError(where, "the data source names no files", "set x = [\"...\"]");
  std::string format = src.format;
  if (!format.empty() &&
      std::find(std::begin(kDataFormats), std::end(kDataFormats), format) == std::end(kDataFormats)) {
    std::vector<std::string> known(std::begin(kDataFormats), std::end(kDataFormats));
    std::string hint = did_you_mean(format, known);
    throw InputError(
        where, fmt::format("unknown data format '{}'; known: idx, cifar10, npy, npz, csv", format), hint);
  }
  const std::vector<std::string> xs = resolve_data_files(src.x, base_dir, src.pos);
  const std::vector<std::string> ys = resolve_data_files(src.y, base_dir, src.pos);
  if (format.empty()) {
    format = data_format_from_name(xs[0]);
    if (format.empty()) {
      throw InputError(where, fmt::format("cannot tell the format of '{}' from its name", file_name(xs[0])),
                       "set format = \"idx\", \"cifar10\", \"npy\", \"npz\" or \"csv\"");
    }
  }
  const bool labels_inside = format == "cifar10" || format == "csv" || format == "npz";
  if (labels_inside && !ys.empty()) {
    throw InputError(where, fmt::format("{} files hold their labels; y names other files", format),
                     format == "npz" ? "name the label array with y_key" : "remove y");
  }
  if (!labels_inside && ys.empty()) {
    throw InputError(
        where, fmt::format("{} samples need label files: y is missing", format),
        format == "idx" ? "e.g. y = [\"train-labels-idx1-ubyte.gz\"]" : "e.g. y = [\"y_train.npy\"]");
  }

  Column x, y;
  engine::data::Layout layout = engine::data::Layout::plain;
  const int64_t spill = options.spill_bytes;
  if (format == "idx") {
    for (const auto& f : xs) x.append(read_idx(f, spill));
    for (const auto& f : ys) y.append(read_idx(f, spill));
  } else if (format == "cifar10") {
    for (const auto& f : xs) read_cifar10(f, &x, &y, spill);
    layout = engine::data::Layout::chw;
  } else if (format == "npy") {
    for (const auto& f : xs) x.append(read_npy(f, spill));
    for (const auto& f : ys) y.append(read_npy(f, spill));
  } else if (format == "npz") {
    for (const auto& f : xs) {
      ZipArchive zip(f);
      x.append(read_npz_array(zip, src.x_key, spill));
      y.append(read_npz_array(zip, src.y_key, spill));
    }
  } else {
    CsvOptions co;
    co.header = src.header;
    co.label_column = src.label_column;
    co.spill_bytes = spill;
    for (const auto& f : xs) read_csv(f, co, &x, &y);
  }
  // Arrays of images follow Keras's convention: [N, H, W, C].
  if ((format == "npy" || format == "npz") && x.shape().rank() == 3) layout = engine::data::Layout::hwc;

  const std::string x_desc = describe_files(xs);
  if (x.size() != y.size()) {
    throw InputError(
        where,
        fmt::format("{} hold{} {} samples, but {} hold{} {} labels", x_desc, xs.size() == 1 ? "s" : "",
                    x.size(), ys.empty() ? x_desc : describe_files(ys),
                    ys.size() == 1 || (ys.empty() && xs.size() == 1) ? "s" : "", y.size()),
        "the sample and label files must match one to one");
  }
  if (x.size() == 0) throw InputError(where, fmt::format("{} holds no samples", x_desc));
  if (src.limit < 0) throw InputError(where, fmt::format("limit {} is negative", src.limit));
  std::shared_ptr<const engine::data::Dataset> ds =
      std::make_shared<ArrayDataset>(std::move(x), std::move(y), layout, x_desc);
  if (src.limit > 0 && src.limit < ds->size()) ds = engine::data::subset(ds, 0, src.limit);
  return ds;
}

namespace {

// The weights of a source that gives none: every sample weighs 1.
class UnitWeights final : public engine::data::Dataset {
 public:
  explicit UnitWeights(int64_t n) : n_(n) {}
  int64_t size() const override { return n_; }
  const engine::Shape& sample_shape() const override { return shape_; }
  engine::DType sample_dtype() const override { return engine::DType::f32; }
  const engine::Shape& label_shape() const override { return shape_; }
  engine::DType label_dtype() const override { return engine::DType::f32; }
  void read_sample(int64_t, void* out) const override { *static_cast<float*>(out) = 1.0f; }
  void read_label(int64_t, void* out) const override { *static_cast<float*>(out) = 1.0f; }
  std::string describe() const override { return "sample weights of 1"; }

 private:
  int64_t n_;
  engine::Shape shape_;
};

// Record i of a one-value column, as double.
double weight_at(const Column& c, int64_t i) {
  uint8_t raw[8] = {};
  c.read(i, raw);
  auto as = [&]<class T>(T) {
    T v;
    std::memcpy(&v, raw, sizeof v);
    return static_cast<double>(v);
  };
  switch (c.dtype()) {
    case engine::DType::f32:
      return as(float{});
    case engine::DType::f64:
      return as(double{});
    case engine::DType::i32:
      return as(int32_t{});
    case engine::DType::i64:
      return as(int64_t{});
    default:
      return raw[0];
  }
}

}  // namespace

bool has_sample_weights(const DataSource& src) {
  return !src.sample_weight.empty() || !src.sample_weight_key.empty();
}

std::shared_ptr<const engine::data::Dataset> with_sample_weights(
    std::shared_ptr<const engine::data::Dataset> data, const DataSource& src, const std::string& base_dir,
    const DatasetOptions& options) {
  const int64_t n = data->size();
  if (!has_sample_weights(src))
    return engine::data::with_more_inputs(std::move(data), {std::make_shared<UnitWeights>(n)});
  const std::string where = where_in_spec(src.pos);
  Column w;
  std::vector<std::string> files;
  if (!src.sample_weight.empty()) {
    files = resolve_data_files(src.sample_weight, base_dir, src.pos);
    for (const auto& f : files) w.append(read_npy(f, options.spill_bytes));
  } else {
    const std::string format = !src.format.empty() ? src.format
                               : src.x.empty()     ? std::string()
                                                   : data_format_from_name(src.x[0]);
    if (!src.x_by_input.empty())
      throw InputError(where,
                       "sample_weight_key reads the .npz files that x names, and x names files by input",
                       "give the weights in .npy files: sample_weight = \"w.npy\"");
    if (format != "npz")
      throw InputError(where,
                       fmt::format("sample_weight_key names an array of .npz files, and x names {} files",
                                   format.empty() ? "other" : format),
                       "give the weights in .npy files: sample_weight = \"w.npy\"");
    files = resolve_data_files(src.x, base_dir, src.pos);
    for (const auto& f : files) {
      ZipArchive zip(f);
      w.append(read_npz_array(zip, src.sample_weight_key, options.spill_bytes));
    }
  }
  const std::string desc = describe_files(files);
  const engine::DType t = w.dtype();
  if (t != engine::DType::f32 && t != engine::DType::f64 && t != engine::DType::i32 &&
      t != engine::DType::i64 && t != engine::DType::u8)
    throw InputError(desc, fmt::format("holds sample weights of dtype {}", engine::dtype_name(t)),
                     "store the weights as floats");
  if (w.shape().numel() != 1)
    throw InputError(
        desc, fmt::format("holds sample weights of shape {}; a sample has one weight", w.shape().str()),
        "give an array of shape [N]: one weight per sample");
  const int64_t count = src.limit > 0 ? std::min(src.limit, w.size()) : w.size();
  if (count != n)
    throw InputError(desc, fmt::format("holds {} sample weights for {} samples", count, n),
                     "give one weight per sample, in the samples' order");
  for (int64_t i = 0; i < count; ++i) {
    const double v = weight_at(w, i);
    if (!std::isfinite(v) || v < 0)
      throw InputError(desc, fmt::format("sample {} weighs {}", i, v), "weights are finite and not negative");
  }
  std::shared_ptr<const engine::data::Dataset> weights =
      std::make_shared<ArrayDataset>(w, w, engine::data::Layout::plain, desc);
  if (count < weights->size()) weights = engine::data::subset(weights, 0, count);
  return engine::data::with_more_inputs(std::move(data), {std::move(weights)});
}

std::shared_ptr<const engine::data::Dataset> open_dataset(const DataSource& src, const std::string& base_dir,
                                                          const std::vector<std::string>& inputs,
                                                          const DatasetOptions& options) {
  TRAINER_ASSERT(!inputs.empty());
  const std::string where = where_in_spec(src.pos);
  // Every name in the tables must be an input, and x = { ... } must name each input.
  auto check_names = [&](const auto& table, const char* key) {
    for (const auto& [name, v] : table)
      if (std::find(inputs.begin(), inputs.end(), name) == inputs.end())
        throw InputError(
            where, fmt::format("{} names '{}', which is not an input of the model", key, name),
            fmt::format("{}the model's inputs: {}", did_you_mean(name, inputs), fmt::join(inputs, ", ")));
  };
  check_names(src.x_by_input, "x");
  check_names(src.x_keys, "x_key");
  if (!src.x_by_input.empty())
    for (const std::string& name : inputs)
      if (!src.x_by_input.count(name))
        throw InputError(where, fmt::format("x names no files for the model's input '{}'", name),
                         fmt::format("add {} = \"FILE.npy\" to x", name));
  if (inputs.size() == 1 && src.x_by_input.empty() && src.x_keys.empty())
    return open_dataset(src, base_dir, options);

  std::string format = src.format;
  if (format.empty()) {
    const std::vector<std::string>& some = src.x_by_input.empty() ? src.x : src.x_by_input.begin()->second;
    format = some.empty() ? "" : data_format_from_name(some[0]);
  }
  if (format != "npy" && format != "npz")
    throw InputError(
        where,
        fmt::format("the model has {} inputs ({}); its data comes in .npz or .npy files, not {}",
                    inputs.size(), fmt::join(inputs, ", "), format.empty() ? "these" : format),
        "an .npz with one array per input (named after it), or x = { NAME = \"FILE.npy\", ... }");
  if (format == "npy" && src.x_by_input.empty())
    throw InputError(where,
                     fmt::format("the model has {} inputs ({}); x names one set of .npy files", inputs.size(),
                                 fmt::join(inputs, ", ")),
                     fmt::format("name each input's files: x = {{ {} = \"...npy\", ... }}", inputs[0]));
  std::vector<std::shared_ptr<const engine::data::Dataset>> parts;
  for (const std::string& name : inputs) {
    DataSource one = src;
    one.format = format;
    one.x_by_input.clear();
    one.x_keys.clear();
    if (!src.x_by_input.empty()) one.x = src.x_by_input.at(name);
    auto key = src.x_keys.find(name);
    one.x_key = key != src.x_keys.end() ? key->second : inputs.size() == 1 ? src.x_key : name;
    try {
      parts.push_back(open_dataset(one, base_dir, options));
    } catch (const InputError& e) {  // name the input whose data is wrong
      const std::string what = e.what();
      throw InputError(
          e.where(),
          fmt::format("{} (the data of the model's input '{}')",
                      e.where().empty() ? what : what.substr(std::min(what.size(), e.where().size() + 2)),
                      name),
          e.hint());
    }
  }
  std::shared_ptr<const engine::data::Dataset> first = parts[0];
  parts.erase(parts.begin());
  if (parts.empty()) return first;
  return engine::data::with_more_inputs(std::move(first), std::move(parts));
}

}  // namespace trainer::formats
