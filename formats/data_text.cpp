// Text data: folders of class folders of .txt files, standardized, split and turned into token ids.
#include "formats/data_text.h"

#include <dirent.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/util/error.h"
#include "formats/checkpoint_hash.h"
#include "formats/data_array.h"
#include "formats/data_bytes.h"
#include "formats/datasets.h"

namespace trainer::formats {

namespace {

bool is_dir(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A folder that is not a symbolic link: the walk into class folders does not follow links to folders (as
// Keras's walk does not), so a link to a parent cannot loop.
bool is_real_dir(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The entries of a folder (without . and ..), in natural order.
std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") out.push_back(name);
  }
  closedir(d);
  std::sort(out.begin(), out.end(), natural_less);
  return out;
}

// Keras's punctuation: Python's string.punctuation.
bool punctuation(unsigned char c) {
  return c < 0x80 && std::ispunct(c);
}

// The length of the UTF-8 sequence at s[i], or 0 when the bytes there are not one.
size_t utf8_length(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  if (n == 2 && c < 0xC2) return 0;  // overlong
  return n;
}

}  // namespace

std::vector<std::string> text_words(std::string_view text, const std::string& standardize) {
  const bool lower = standardize == "lower_and_strip_punctuation" || standardize == "lower";
  const bool strip = standardize == "lower_and_strip_punctuation" || standardize == "strip_punctuation";
  std::vector<std::string> words;
  std::string word;
  auto end_word = [&] {
    if (!word.empty()) words.push_back(std::move(word));
    word.clear();
  };
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      if (std::isspace(c)) {
        end_word();
      } else if (!(strip && punctuation(c))) {
        word.push_back(lower ? static_cast<char>(std::tolower(c)) : static_cast<char>(c));
      }
      continue;
    }
    const size_t n = utf8_length(text, i);
    if (n == 0) {
      word += "\xEF\xBF\xBD";  // U+FFFD for a byte that is not UTF-8
      ++i;
      continue;
    }
    std::string_view ch = text.substr(i, n);
    i += n;
    if (ch == "\xC2\xA0") {  // no-break space
      end_word();
      continue;
    }
    // Latin-1's capitals (U+00C0 to U+00DE but for the multiplication sign) lowercase by adding 0x20.
    if (lower && n == 2 && c == 0xC3) {
      const auto d = static_cast<unsigned char>(ch[1]);
      if (d >= 0x80 && d <= 0x9E && d != 0x97) {
        word.push_back(static_cast<char>(c));
        word.push_back(static_cast<char>(d + 0x20));
        continue;
      }
    }
    word.append(ch);
  }
  end_word();
  return words;
}

namespace {

// The folders that x names (globs allowed), each an InputError at the source when it is not one.
std::vector<std::string> resolve_folders(const DataSource& src, const std::string& base_dir,
                                         const std::string& kind, const std::string& samples) {
  const std::string at = where_in_spec(src.pos);
  if (src.x.empty())
    throw InputError(at, fmt::format("the {} source names no folders", kind),
                     "set x to a folder of class folders, such as \"train\"");
  std::vector<std::string> folders;
  for (const std::string& pattern : src.x) {
    const std::string full =
        pattern.starts_with('/') || base_dir.empty() ? pattern : base_dir + "/" + pattern;
    std::vector<std::string> found;
    if (has_glob(pattern)) {
      glob_t g{};
      if (glob(full.c_str(), 0, nullptr, &g) == 0)
        for (size_t k = 0; k < g.gl_pathc; ++k)
          if (is_dir(g.gl_pathv[k])) found.emplace_back(g.gl_pathv[k]);
      globfree(&g);
      std::sort(found.begin(), found.end(), natural_less);
    } else if (is_dir(full)) {
      found.push_back(full);
    }
    if (found.empty())
      throw InputError(at,
                       fmt::format("{} data: '{}' is not a folder{}", kind, pattern,
                                   full == pattern ? "" : fmt::format(" (looked for {})", full)),
                       is_regular_file(full)
                           ? fmt::format("x names a folder that holds one folder of {} per class", samples)
                           : "relative paths start at the spec's folder");
    // A folder named twice (two globs, two paths to it) is read once.
    for (const std::string& f : found) {
      std::error_code ec;
      const std::string canonical = std::filesystem::weakly_canonical(f, ec).string();
      if (std::none_of(folders.begin(), folders.end(), [&](const std::string& g) {
            std::error_code e2;
            return std::filesystem::weakly_canonical(g, e2).string() == canonical;
          }))
        folders.push_back(f);
    }
  }
  return folders;
}

// The class folders (not hidden) of `folders`, sorted.
std::vector<std::string> class_folders_of(const std::vector<std::string>& folders) {
  std::set<std::string> all;
  for (const std::string& f : folders)
    for (const std::string& e : entries(f))
      if (!e.starts_with(".") && is_dir(f + "/" + e)) all.insert(e);
  return {all.begin(), all.end()};
}

}  // namespace

std::vector<std::string> source_classes(const DataSource& src, const std::string& base_dir) {
  if (!src.class_names.empty()) return src.class_names;
  return class_folders_of(resolve_folders(src, base_dir, src.format, "samples"));
}

ClassFiles list_class_files(const DataSource& src, const std::string& base_dir, const std::string& kind,
                            const std::function<bool(const std::string&)>& is_sample,
                            const std::string& samples, const std::vector<std::string>& training_classes,
                            bool classes_named) {
  const std::string at = where_in_spec(src.pos);
  const std::vector<std::string> folders = resolve_folders(src, base_dir, kind, samples);
  ClassFiles c;
  c.class_names = src.class_names;
  // A source without class_names beside training data of folders takes the training classes (its labels
  // are theirs); it may lack one, but not hold another.
  const bool training = c.class_names.empty() && !training_classes.empty();
  if (training) {
    c.class_names = training_classes;
    for (const std::string& name : classes_named ? std::vector<std::string>{} : class_folders_of(folders))
      if (std::find(c.class_names.begin(), c.class_names.end(), name) == c.class_names.end())
        throw InputError(at,
                         fmt::format("{} data: class folder '{}' is not one of the training data's ({})",
                                     kind, name, fmt::join(c.class_names, ", ")),
                         "give every source the training data's class folders, or list them in class_names");
  }
  if (c.class_names.empty()) {
    // Every class folder found, in sorted order; each folder x names must hold the same classes.
    c.class_names = class_folders_of(folders);
    if (c.class_names.empty())
      throw InputError(at, fmt::format("{} data: {} holds no class folders", kind, folders[0]),
                       fmt::format("put each class's {} in a folder named after the class", samples));
  }
  // Every file first; the samples then come in the order of a hash of their class and file names, which
  // mixes the classes (as Keras shuffles the files) the same way every time, so that limit and
  // validation_split take samples of every class.
  struct Found {
    uint64_t key;
    std::string path;
    int64_t label;
  };
  std::vector<Found> found;
  for (const std::string& f : folders) {
    for (size_t k = 0; k < c.class_names.size(); ++k) {
      const std::string dir = f + "/" + c.class_names[k];
      if (training && !is_dir(dir)) continue;  // no samples of that class here
      if (!is_dir(dir)) {
        std::vector<std::string> there;
        for (const std::string& e : entries(f))
          if (!e.starts_with(".") && is_dir(f + "/" + e)) there.push_back(e);
        std::string hint = did_you_mean(c.class_names[k], there);
        hint += (hint.empty() ? "" : "; ") +
                fmt::format("its class folders: {}",
                            there.empty() ? "none" : fmt::format("{}", fmt::join(there, ", ")));
        throw InputError(at, fmt::format("{} data: {} has no class folder '{}'", kind, f, c.class_names[k]),
                         hint);
      }
      size_t n = 0;
      // The class folder's files and those of its subfolders (as Keras walks them), hidden ones left out.
      std::function<void(const std::string&, const std::string&)> walk = [&](const std::string& d,
                                                                             const std::string& rel) {
        for (const std::string& e : entries(d)) {
          if (e.starts_with(".")) continue;
          const std::string path = d + "/" + e;
          if (is_real_dir(path)) {
            walk(path, rel + e + "/");
            continue;
          }
          if (is_dir(path)) continue;  // a link to a folder
          if (!is_sample(e) || !is_regular_file(path)) continue;
          ++n;
          const std::string name = c.class_names[k] + "/" + rel + e;
          Xxh64 h;
          h.update(name.data(), name.size());
          found.push_back({h.digest(), path, static_cast<int64_t>(k)});
        }
      };
      walk(dir, "");
      if (n == 0 && !training)
        throw InputError(at, fmt::format("{} data: the class folder {} holds no {}", kind, dir, samples),
                         fmt::format("each class folder holds its samples as {}", samples));
    }
  }
  std::stable_sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.key < b.key; });
  if (src.limit > 0 && static_cast<size_t>(src.limit) < found.size())
    found.resize(static_cast<size_t>(src.limit));
  for (Found& f : found) {
    c.files.push_back(std::move(f.path));
    c.labels.push_back(f.label);
  }
  return c;
}

TextCorpus read_text_source(const DataSource& src, const std::string& base_dir,
                            const std::vector<std::string>& training_classes, bool classes_named) {
  ClassFiles files = list_class_files(
      src, base_dir, "text", [](const std::string& name) { return ends_with_any_case(name, ".txt"); },
      ".txt files", training_classes, classes_named);
  TextCorpus c;
  c.class_names = std::move(files.class_names);
  c.labels = std::move(files.labels);
  for (const std::string& path : files.files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw InputError(path, "cannot be read", "check the file's permissions");
    std::ostringstream text;
    text << in.rdbuf();
    c.texts.push_back(std::move(text).str());
  }
  c.files = std::move(files.files);
  return c;
}

std::vector<std::string> adapt_vocabulary(const std::vector<std::string>& texts, const TextSpec& spec) {
  std::unordered_map<std::string, int64_t> counts;
  for (const std::string& t : texts)
    for (std::string& w : text_words(t, spec.standardize)) ++counts[std::move(w)];
  counts.erase("[UNK]");  // the unknown-word token is never a word of the vocabulary (as Keras removes it)
  std::vector<std::pair<std::string, int64_t>> order(counts.begin(), counts.end());
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second
                                : a.first > b.first;  // ties: Keras's reverse byte order
  });
  size_t keep = order.size();
  if (spec.max_tokens > 0) keep = std::min(keep, static_cast<size_t>(spec.max_tokens - 2));
  std::vector<std::string> out;
  out.reserve(keep);
  for (size_t k = 0; k < keep; ++k) out.push_back(std::move(order[k].first));
  return out;
}

TextVectorizer::TextVectorizer(const TextSpec& spec) : spec_(spec) {
  ids_.reserve(spec_.vocabulary.size());
  for (size_t k = 0; k < spec_.vocabulary.size(); ++k)
    ids_.emplace(spec_.vocabulary[k], static_cast<int32_t>(k + 2));
}

void TextVectorizer::encode(std::string_view text, int32_t* out) const {
  std::vector<std::string> words = text_words(text, spec_.standardize);
  const auto length = static_cast<size_t>(spec_.output_sequence_length);
  size_t first = 0, n = words.size();
  if (n > length) {
    if (spec_.truncating == "pre") first = n - length;  // keep the last words
    n = length;
  }
  const size_t pad = length - n;
  int32_t* ids = out + (spec_.padding == "pre" ? pad : 0);
  std::fill_n(out, length, 0);
  for (size_t k = 0; k < n; ++k) {
    auto it = ids_.find(words[first + k]);
    ids[k] = it == ids_.end() ? 1 : it->second;
  }
}

Column class_labels(const std::vector<int64_t>& labels, const std::vector<std::string>& files,
                    int64_t classes) {
  const auto n = static_cast<int64_t>(labels.size());
  const size_t record = classes > 0 ? static_cast<size_t>(classes) * sizeof(float) : sizeof(int64_t);
  std::vector<uint8_t> bytes(static_cast<size_t>(n) * record);
  for (int64_t i = 0; i < n; ++i) {
    uint8_t* at = bytes.data() + static_cast<size_t>(i) * record;
    if (classes > 0) {
      const float one = 1.0f;
      std::memcpy(at + static_cast<size_t>(labels[static_cast<size_t>(i)]) * sizeof(float), &one, sizeof one);
    } else {
      std::memcpy(at, &labels[static_cast<size_t>(i)], sizeof(int64_t));
    }
  }
  std::shared_ptr<const Bytes> b = Bytes::from_vector(std::move(bytes));
  Column y = classes > 0 ? Column(engine::DType::f32, engine::Shape{classes})
                         : Column(engine::DType::i64, engine::Shape{});
  for (int64_t i = 0; i < n; ++i)
    y.add({b, static_cast<uint64_t>(i) * record, record, 1, files[static_cast<size_t>(i)], {}});
  return y;
}

std::shared_ptr<const engine::data::Dataset> text_dataset(const TextCorpus& corpus, const TextVectorizer& v,
                                                          const std::string& name, bool one_hot) {
  const int64_t n = static_cast<int64_t>(corpus.texts.size());
  const auto length = static_cast<size_t>(v.length());
  std::vector<uint8_t> ids(static_cast<size_t>(n) * length * sizeof(int32_t));
  for (int64_t i = 0; i < n; ++i)
    v.encode(corpus.texts[static_cast<size_t>(i)], reinterpret_cast<int32_t*>(ids.data()) + i * v.length());
  std::shared_ptr<const Bytes> xb = Bytes::from_vector(std::move(ids));
  Column x(engine::DType::i32, engine::Shape{v.length()});
  // One segment per file, so that a sample's messages name its file.
  for (int64_t i = 0; i < n; ++i) {
    const std::string& file = corpus.files[static_cast<size_t>(i)];
    x.add({xb, static_cast<uint64_t>(i) * length * sizeof(int32_t), length * sizeof(int32_t), 1, file, {}});
  }
  Column y = class_labels(corpus.labels, corpus.files,
                          one_hot ? static_cast<int64_t>(corpus.class_names.size()) : 0);
  return std::make_shared<ArrayDataset>(std::move(x), std::move(y), engine::data::Layout::plain, name);
}

}  // namespace trainer::formats
