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
#include <fstream>

#include "engine/util/error.h"
#include "formats/data_array.h"
#include "formats/data_cifar.h"
#include "formats/data_csv.h"
#include "formats/data_idx.h"
#include "formats/data_image.h"
#include "formats/data_npy.h"
#include "formats/data_text.h"

namespace trainer::formats {

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

bool has_glob(const std::string& s) {
  return s.find_first_of("*?[") != std::string::npos;
}

std::string where_in_spec(const SourcePos& pos) {
  return pos.file.empty() ? std::string("data") : pos.str();
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool ends_with_any_case(const std::string& name, std::string_view suffix) {
  if (name.size() < suffix.size()) return false;
  return std::equal(suffix.begin(), suffix.end(), name.end() - static_cast<std::ptrdiff_t>(suffix.size()),
                    [](char a, char b) {
                      return std::tolower(static_cast<unsigned char>(a)) ==
                             std::tolower(static_cast<unsigned char>(b));
                    });
}

namespace {

// A hint that goes before another sentence: followed by a space when there is one.
std::string with_space(std::string hint) {
  return hint.empty() ? hint : hint + " ";
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
        throw InputError(where_in_spec(pos),
                         exists ? fmt::format("data file '{}' is not a regular file", pat)
                                : fmt::format("data file '{}' does not exist{}", pat, looked),
                         !exists               ? missing_file_hint(full)
                         : S_ISDIR(st.st_mode) ? "a folder of class folders (Keras's "
                                                 "text_dataset_from_directory, image_dataset_from_directory) "
                                                 "is read with format = \"text\" or \"images\""
                                               : "name a file, or a glob such as \"data_batch_*.bin\"");
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

namespace {

// Whether the file starts as a pickle does (a file that cannot be read: false).
bool file_starts_as_pickle(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char head[2] = {};
  return f.read(head, 2) && starts_as_pickle({head, 2});
}

}  // namespace

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
        where,
        fmt::format("unknown data format '{}'; known: idx, cifar10, npy, npz, csv, text, images", format),
        hint);
  }
  if (format == "images") {
    if (!src.y.empty())
      throw InputError(where, "image data is labelled by its class folders; y names other files", "remove y");
    const std::vector<int64_t>& s = options.image_shape;
    if (s.size() != 3 || (s[2] != 1 && s[2] != 3 && s[2] != 4))
      throw InputError(
          where,
          fmt::format("image data needs a model input of [height, width, channels] with 1, 3 or 4 "
                      "channels, and the input is [{}]",
                      fmt::join(s, ", ")),
          "e.g. input = [180, 180, 3] for RGB images resized to 180 by 180");
    auto images =
        open_image_source(src, base_dir, s[0], s[1], s[2], options.spill_bytes, options.training_classes,
                          options.training_classes_named, options.one_hot_labels);
    if (images->size() == 0)
      throw InputError(where, "the image source holds no samples", "point x at folders of class folders");
    return images;
  }
  if (format == "text") {
    if (!src.y.empty())
      throw InputError(where, "text data is labelled by its class folders; y names other files", "remove y");
    if (!options.text || options.text->vocabulary.empty())
      throw InputError(where, "text data needs [data.text] and its vocabulary",
                       "add [data.text]; trainer fit adapts the vocabulary on the training texts");
    const TextCorpus corpus =
        read_text_source(src, base_dir, options.training_classes, options.training_classes_named);
    if (corpus.texts.empty())
      throw InputError(where, "the text source holds no samples", "point x at folders of class folders");
    return text_dataset(corpus, TextVectorizer(*options.text),
                        fmt::format("{} ({} texts in {} classes)", fmt::join(src.x, ", "),
                                    corpus.texts.size(), corpus.class_names.size()),
                        options.one_hot_labels);
  }
  const std::vector<std::string> xs = resolve_data_files(src.x, base_dir, src.pos);
  const std::vector<std::string> ys = resolve_data_files(src.y, base_dir, src.pos);
  if (format.empty()) {
    format = data_format_from_name(xs[0]);
    // A name that tells nothing, such as the CIFAR Python version's data_batch_1: a pickle is one of those.
    if (format.empty() && file_starts_as_pickle(xs[0])) format = "cifar10";
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
    if (src.x_key != "x" && src.x_key != "data")
      throw InputError(
          where,
          fmt::format("x_key = \"{}\" names an array of .npz files, and a CIFAR batch's images are "
                      "its 'data'",
                      src.x_key),
          "remove x_key (y_key names a CIFAR Python batch's labels)");
    // y_key names the labels of a CIFAR Python batch ('coarse_labels' of CIFAR-100).
    for (const auto& f : xs) read_cifar10(f, &x, &y, spill, src.y_key != "y" ? src.y_key : std::string());
    layout = engine::data::Layout::chw;
  } else if (format == "npy") {
    for (const auto& f : xs) x.append(read_npy(f, spill, options.sequences));
    for (const auto& f : ys) y.append(read_npy(f, spill));
  } else if (format == "npz") {
    for (const auto& f : xs) {
      ZipArchive zip(f);
      x.append(read_npz_array(zip, src.x_key, spill, options.sequences));
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
  if (x.size() == 0)
    throw InputError(where, fmt::format("{} holds no samples", x_desc),
                     "point the spec at a file with samples (a CSV file needs rows after its header line)");
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
  UnitWeights(int64_t n, engine::Shape shape) : n_(n), shape_(std::move(shape)) {}
  int64_t size() const override { return n_; }
  const engine::Shape& sample_shape() const override { return shape_; }
  engine::DType sample_dtype() const override { return engine::DType::f32; }
  const engine::Shape& label_shape() const override { return shape_; }
  engine::DType label_dtype() const override { return engine::DType::f32; }
  void read_sample(int64_t, void* out) const override {
    std::fill_n(static_cast<float*>(out), shape_.numel(), 1.0f);
  }
  void read_label(int64_t i, void* out) const override { read_sample(i, out); }
  std::string describe() const override { return "sample weights of 1"; }

 private:
  int64_t n_;
  engine::Shape shape_;
};

// Element e of a record's bytes `raw` of dtype t, as double.
double element_at(engine::DType t, const uint8_t* raw, int64_t e) {
  auto as = [&]<class T>(T) {
    T v;
    std::memcpy(&v, raw + e * static_cast<int64_t>(sizeof v), sizeof v);
    return static_cast<double>(v);
  };
  switch (t) {
    case engine::DType::f32:
      return as(float{});
    case engine::DType::f64:
      return as(double{});
    case engine::DType::i32:
      return as(int32_t{});
    case engine::DType::i64:
      return as(int64_t{});
    default:
      return raw[e];
  }
}

}  // namespace

bool has_sample_weights(const DataSource& src) {
  return !src.sample_weight.empty() || !src.sample_weight_key.empty() || has_output_sample_weights(src);
}

bool has_output_sample_weights(const DataSource& src) {
  return !src.sample_weight_by_output.empty() || !src.sample_weight_keys.empty();
}

std::shared_ptr<const engine::data::Dataset> with_sample_weights(
    std::shared_ptr<const engine::data::Dataset> data, const DataSource& src, const std::string& base_dir,
    const DatasetOptions& options, const std::vector<int64_t>& unit_shape) {
  const int64_t n = data->size();
  if (!has_sample_weights(src))
    return engine::data::with_more_inputs(std::move(data),
                                          {std::make_shared<UnitWeights>(n, engine::Shape(unit_shape))});
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
  if (w.shape().rank() > 1)
    throw InputError(desc,
                     fmt::format("holds sample weights of shape {}; a sample has one weight, or one per step",
                                 w.shape().str()),
                     "give an array of shape [N], or [N, steps] for an output of steps");
  const int64_t count = src.limit > 0 ? std::min(src.limit, w.size()) : w.size();
  if (count != n)
    throw InputError(desc, fmt::format("holds {} sample weights for {} samples", count, n),
                     "give one weight per sample, in the samples' order");
  std::vector<uint8_t> record(w.record_bytes());
  for (int64_t i = 0; i < count; ++i) {
    w.read(i, record.data());
    for (int64_t e = 0; e < w.shape().numel(); ++e) {
      const double v = element_at(w.dtype(), record.data(), e);
      if (!std::isfinite(v) || v < 0)
        throw InputError(desc,
                         w.shape().rank() == 0 ? fmt::format("sample {} weighs {}", i, v)
                                               : fmt::format("sample {} weighs {} at step {}", i, v, e),
                         "weights are finite and not negative");
    }
  }
  std::shared_ptr<const engine::data::Dataset> weights =
      std::make_shared<ArrayDataset>(w, w, engine::data::Layout::plain, desc);
  if (count < weights->size()) weights = engine::data::subset(weights, 0, count);
  return engine::data::with_more_inputs(std::move(data), {std::move(weights)});
}

namespace {

// A source's tables by input (x, x_key) or by output (y, y_key): every name must be one of the model's
// `names` (of `what`: "input" or "output"), and a table of files must name each of them.
void check_named(const std::string& where, const std::map<std::string, std::vector<std::string>>& files,
                 const std::map<std::string, std::string>& arrays, const char* files_key,
                 const char* arrays_key, const std::vector<std::string>& names, const char* what,
                 const char* kind) {
  auto known = [&](const auto& table, const char* key) {
    for (const auto& [name, v] : table)
      if (std::find(names.begin(), names.end(), name) == names.end())
        throw InputError(where,
                         fmt::format("{} names '{}', which is not an {} of the model", key, name, what),
                         fmt::format("{}the model's {}s: {}", with_space(did_you_mean(name, names)), what,
                                     fmt::join(names, ", ")));
  };
  known(files, files_key);
  known(arrays, arrays_key);
  if (!files.empty())
    for (const std::string& name : names)
      if (!files.count(name))
        throw InputError(
            where, fmt::format("{} names no {}files for the model's {} '{}'", files_key, kind, what, name),
            fmt::format("add {} = \"FILE.npy\" to {}", name, files_key));
}

// The format of a source of arrays: given, or from its first file's name ("" when it tells none).
std::string array_format(const DataSource& src) {
  if (!src.format.empty()) return src.format;
  const std::vector<std::string>& some = src.x_by_input.empty() ? src.x : src.x_by_input.begin()->second;
  return some.empty() ? "" : data_format_from_name(some[0]);
}

// An error in the data of one input or output, saying whose (`whose`: "the data of the model's input 'x'").
InputError naming(const InputError& e, const std::string& whose) {
  const std::string what = e.what();
  return InputError(
      e.where(),
      fmt::format("{} ({})",
                  e.where().empty() ? what : what.substr(std::min(what.size(), e.where().size() + 2)), whose),
      e.hint());
}

}  // namespace

std::shared_ptr<const engine::data::Dataset> open_dataset(const DataSource& src, const std::string& base_dir,
                                                          const std::vector<std::string>& inputs,
                                                          const DatasetOptions& options) {
  TRAINER_ASSERT(!inputs.empty());
  const std::string where = where_in_spec(src.pos);
  // Every name in the tables must be an input, and x = { ... } must name each input.
  check_named(where, src.x_by_input, src.x_keys, "x", "x_key", inputs, "input", "");
  if (inputs.size() == 1 && src.x_by_input.empty() && src.x_keys.empty())
    return open_dataset(src, base_dir, options);
  const std::string format = array_format(src);
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
      throw naming(e, fmt::format("the data of the model's input '{}'", name));
    }
  }
  std::shared_ptr<const engine::data::Dataset> first = parts[0];
  parts.erase(parts.begin());
  if (parts.empty()) return first;
  return engine::data::with_more_inputs(std::move(first), std::move(parts));
}

std::shared_ptr<const engine::data::Dataset> open_dataset(const DataSource& src, const std::string& base_dir,
                                                          const std::vector<std::string>& inputs,
                                                          const std::vector<std::string>& outputs,
                                                          const DatasetOptions& options) {
  TRAINER_ASSERT(!outputs.empty());
  const std::string where = where_in_spec(src.pos);
  check_named(where, src.y_by_output, src.y_keys, "y", "y_key", outputs, "output", "label ");
  if (outputs.size() == 1 && src.y_by_output.empty() && src.y_keys.empty())
    return open_dataset(src, base_dir, inputs, options);
  const std::string format = array_format(src);
  if (format != "npy" && format != "npz")
    throw InputError(
        where,
        fmt::format("the model has {} outputs ({}); their labels come in .npz or .npy files, not {}",
                    outputs.size(), fmt::join(outputs, ", "), format.empty() ? "these" : format),
        "an .npz with one label array per output (named after it), or y = { NAME = \"FILE.npy\", ... }");
  if (format == "npy" && src.y_by_output.empty())
    throw InputError(where,
                     fmt::format("the model has {} outputs ({}); y names one set of label files",
                                 outputs.size(), fmt::join(outputs, ", ")),
                     fmt::format("name each output's labels: y = {{ {} = \"...npy\", ... }}", outputs[0]));
  if (format == "npy" && !src.y_keys.empty())
    throw InputError(where, "y_key names arrays of .npz files, and the labels come from .npy files",
                     "name each output's label files: y = { NAME = \"FILE.npy\", ... }");
  if (format == "npz" && src.y_keys.empty() && src.y_key != "y")
    throw InputError(
        where,
        fmt::format("y_key names one array, '{}', and the model has {} outputs ({})", src.y_key,
                    outputs.size(), fmt::join(outputs, ", ")),
        "name each output's array: y_key = { NAME = \"ARRAY\", ... }, or name the arrays after the "
        "outputs");
  if (format == "npz" && !src.y_by_output.empty())
    throw InputError(where, "npz files hold their labels; y names other files",
                     "name each output's label array with y_key = { NAME = \"ARRAY\" }, or name the arrays "
                     "after the outputs");
  // The array (npz) or files (npy) of output k's labels.
  auto key_of = [&](const std::string& name) {
    auto it = src.y_keys.find(name);
    return it != src.y_keys.end() ? it->second : outputs.size() == 1 ? src.y_key : name;
  };
  DataSource first = src;
  first.format = format;
  first.y_by_output.clear();
  first.y_keys.clear();
  if (format == "npy")
    first.y = src.y_by_output.at(outputs[0]);
  else
    first.y_key = key_of(outputs[0]);
  std::shared_ptr<const engine::data::Dataset> data;
  try {
    data = open_dataset(first, base_dir, inputs, options);
  } catch (const InputError& e) {
    throw naming(e, fmt::format("the labels of the model's output '{}'", outputs[0]));
  }
  std::vector<std::shared_ptr<const engine::data::Dataset>> labels;
  for (size_t k = 1; k < outputs.size(); ++k) {
    const std::string& name = outputs[k];
    try {
      Column y;
      std::vector<std::string> files;
      if (format == "npy") {
        files = resolve_data_files(src.y_by_output.at(name), base_dir, src.pos);
        for (const auto& f : files) y.append(read_npy(f, options.spill_bytes));
      } else {
        if (!src.x_by_input.empty())
          throw InputError(where, "the label arrays of .npz files need x to name the .npz files",
                           "x = \"train.npz\" with an array per input and per output");
        files = resolve_data_files(src.x, base_dir, src.pos);
        for (const auto& f : files) {
          ZipArchive zip(f);
          y.append(read_npz_array(zip, key_of(name), options.spill_bytes));
        }
      }
      const std::string desc = describe_files(files);
      const int64_t count = src.limit > 0 ? std::min(src.limit, y.size()) : y.size();
      if (count != data->size())
        throw InputError(desc, fmt::format("holds {} labels for {} samples", count, data->size()),
                         "give one label per sample, in the samples' order");
      std::shared_ptr<const engine::data::Dataset> d =
          std::make_shared<ArrayDataset>(y, y, engine::data::Layout::plain, desc);
      if (count < d->size()) d = engine::data::subset(d, 0, count);
      labels.push_back(std::move(d));
    } catch (const InputError& e) {
      throw naming(e, fmt::format("the labels of the model's output '{}'", name));
    }
  }
  return engine::data::with_more_inputs(std::move(data), std::move(labels));
}

std::shared_ptr<const engine::data::Dataset> with_output_sample_weights(
    std::shared_ptr<const engine::data::Dataset> data, const DataSource& src, const std::string& base_dir,
    const std::vector<std::string>& outputs, const DatasetOptions& options,
    const std::vector<std::vector<int64_t>>& unit_shapes) {
  const std::string where = where_in_spec(src.pos);
  std::vector<std::pair<std::string, const char*>> named;
  for (const auto& [name, files] : src.sample_weight_by_output) named.emplace_back(name, "sample_weight");
  for (const auto& [name, key] : src.sample_weight_keys) named.emplace_back(name, "sample_weight_key");
  for (const auto& [name, key] : named)
    if (std::find(outputs.begin(), outputs.end(), name) == outputs.end())
      throw InputError(where, fmt::format("{} names '{}', which is not an output of the model", key, name),
                       fmt::format("{}the model's outputs: {}", with_space(did_you_mean(name, outputs)),
                                   fmt::join(outputs, ", ")));
  for (size_t k = 0; k < outputs.size(); ++k) {
    const std::string& name = outputs[k];
    DataSource one = src;
    one.sample_weight_by_output.clear();
    one.sample_weight_keys.clear();
    if (has_output_sample_weights(src)) {
      one.sample_weight.clear();
      one.sample_weight_key.clear();
      if (auto it = src.sample_weight_by_output.find(name); it != src.sample_weight_by_output.end())
        one.sample_weight = it->second;
      if (auto it = src.sample_weight_keys.find(name); it != src.sample_weight_keys.end())
        one.sample_weight_key = it->second;
    }
    try {
      data = with_sample_weights(std::move(data), one, base_dir, options,
                                 k < unit_shapes.size() ? unit_shapes[k] : std::vector<int64_t>{});
    } catch (const InputError& e) {
      throw naming(e, fmt::format("the sample weights of the model's output '{}'", name));
    }
  }
  return data;
}

}  // namespace trainer::formats
