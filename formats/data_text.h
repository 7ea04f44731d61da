// Text data, as Keras's text_dataset_from_directory and TextVectorization give it: folders of class
// folders of .txt files, each file one sample labelled by its folder, turned into token ids by a vocabulary
// adapted on the training texts (or given by the spec).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/data/dataset.h"
#include "formats/data_array.h"
#include "formats/model_spec.h"

namespace trainer::formats {

// The words of a text as TextVectorization finds them: standardized (lower: ASCII and Latin-1 letters
// lowercased; strip_punctuation: ASCII punctuation removed, as Keras's
// [!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~]), split at runs of white space. Bytes that are not UTF-8 become
// U+FFFD, so every word is valid UTF-8.
std::vector<std::string> text_words(std::string_view text, const std::string& standardize);

// The files of a source of folders of class folders (text, images): each folder that x names (globs allowed)
// holds one folder per class, whose files that `is_sample` accepts (by name; hidden files are left out) are
// the samples (the files of its subfolders too), labelled by the class's index: in class_names' order when
// the source gives it, else in the sorted order of the folders found. The samples come in the order of a hash
// of their class and file names (classes mixed, the same way every time); `limit` keeps the first ones.
// `kind` ("text", "image") and `samples` (".txt files") word the errors: a missing folder, a class folder
// missing or without samples, or no class at all, at the source's position.
struct ClassFiles {
  std::vector<std::string> files;
  std::vector<int64_t> labels;
  std::vector<std::string> class_names;
};
// A source without class_names takes `training_classes` when given (the training source's, for validation
// and test data): a class folder it lacks gives no samples, and one it holds beyond them is left out when the
// training source named its classes (`classes_named`), an error otherwise.
ClassFiles list_class_files(const DataSource& src, const std::string& base_dir, const std::string& kind,
                            const std::function<bool(const std::string&)>& is_sample,
                            const std::string& samples, const std::vector<std::string>& training_classes = {},
                            bool classes_named = false);
// The classes of a source of folders: its class_names, or else its class folders (not hidden ones), sorted.
std::vector<std::string> source_classes(const DataSource& src, const std::string& base_dir);

// The texts of a source: each folder that x names (globs allowed) holds one folder per class, whose .txt
// files are the samples, labelled by the class's index: in class_names' order when the source gives it,
// else in the sorted order of the folders found (the same in every folder x names). The samples come in the
// order of a hash of their class and file names: the classes mixed, the same way every time, so that
// `limit` (which keeps the first ones) and a validation split take samples of every class. A missing folder,
// a class folder missing or empty, or no class at all is an InputError at the source's position.
struct TextCorpus {
  std::vector<std::string> texts;
  std::vector<int64_t> labels;
  std::vector<std::string> files;
  std::vector<std::string> class_names;
};
TextCorpus read_text_source(const DataSource& src, const std::string& base_dir,
                            const std::vector<std::string>& training_classes = {},
                            bool classes_named = false);

// The vocabulary adapt() finds: the words of `texts`, most frequent first (ties in reverse byte order, as
// Keras's adapt; "[UNK]" left out), as many as max_tokens leaves room for beside the ids 0 and 1 (all of them
// for max_tokens 0).
std::vector<std::string> adapt_vocabulary(const std::vector<std::string>& texts, const TextSpec& spec);

// A spec's TextVectorization with its vocabulary: texts to output_sequence_length int32 ids each.
class TextVectorizer {
 public:
  explicit TextVectorizer(const TextSpec& spec);
  int64_t length() const { return spec_.output_sequence_length; }
  // The ids in use: 2 + the vocabulary's words.
  int64_t num_tokens() const { return static_cast<int64_t>(spec_.vocabulary.size()) + 2; }
  void encode(std::string_view text, int32_t* out) const;

 private:
  TextSpec spec_;
  std::unordered_map<std::string, int32_t> ids_;
};

// The corpus as a dataset: int32 [length] ids per sample, int64 labels (one-hot f32 rows with `one_hot`);
// samples are located by their file.
// Labels of class indices as a column located by file: int64 ids, or with `classes` > 0 one-hot f32 rows of
// that many classes (Keras's label_mode "categorical").
Column class_labels(const std::vector<int64_t>& labels, const std::vector<std::string>& files,
                    int64_t classes);

std::shared_ptr<const engine::data::Dataset> text_dataset(const TextCorpus& corpus, const TextVectorizer& v,
                                                          const std::string& name, bool one_hot = false);

}  // namespace trainer::formats
