// The CSV reader: one pass over the mapped text; cells may be quoted; blank lines are skipped.
#include "formats/data_csv.h"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstring>

#include "engine/util/error.h"
#include "formats/data_bytes.h"

namespace trainer::formats {

namespace {

struct Cell {
  std::string_view text;  // without quotes and surrounding blanks
  size_t col = 0;         // 1-based column of the cell's first character
};

// Splits one line into cells. Quoted cells may hold commas; "" inside quotes is a quote.
void split(std::string_view line, std::vector<Cell>* cells, std::string* unquoted) {
  cells->clear();
  size_t i = 0;
  for (;;) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    Cell c;
    c.col = i + 1;
    if (i < line.size() && line[i] == '"') {
      size_t j = i + 1;
      size_t begin = j;
      bool escaped = false;
      while (j < line.size()) {
        if (line[j] == '"') {
          if (j + 1 < line.size() && line[j + 1] == '"') {
            escaped = true;
            j += 2;
            continue;
          }
          break;
        }
        ++j;
      }
      c.text = line.substr(begin, j - begin);
      if (escaped) {
        // Rare: header names with quotes. Keep the unescaped text alive in `unquoted`.
        unquoted->assign(c.text);
        for (size_t k = 0; (k = unquoted->find("\"\"", k)) != std::string::npos; ++k) unquoted->erase(k, 1);
        c.text = *unquoted;
      }
      i = j < line.size() ? j + 1 : j;
      while (i < line.size() && line[i] != ',') ++i;
    } else {
      size_t j = i;
      while (j < line.size() && line[j] != ',') ++j;
      size_t end = j;
      while (end > i && (line[end - 1] == ' ' || line[end - 1] == '\t')) --end;
      c.text = line.substr(i, end - i);
      i = j;
    }
    cells->push_back(c);
    if (i >= line.size()) break;
    ++i;  // the comma
  }
}

}  // namespace

void read_csv(const std::string& path, const CsvOptions& options, Column* x, Column* y) {
  const std::string name = file_name(path);
  auto bytes = load_file(path, options.spill_bytes);
  std::string_view text(reinterpret_cast<const char*>(bytes->data()), bytes->size());
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // a UTF-8 byte-order mark

  std::vector<Cell> cells;
  std::string unquoted;
  std::vector<std::string> names;
  int64_t ncols = -1, label = -1;
  SpillWriter features(options.spill_bytes, name);
  std::vector<float> row;
  std::vector<double> labels;
  std::vector<int64_t> lines;
  bool integral = true;
  int64_t line_no = 0;
  size_t pos = 0;
  int64_t first_line = 0;  // the line that fixed the column count

  auto resolve_label = [&]() {
    const std::string& lc = options.label_column;
    if (lc.empty()) {
      label = ncols - 1;
      return;
    }
    int64_t idx = 0;
    auto r = std::from_chars(lc.data(), lc.data() + lc.size(), idx);
    if (r.ec == std::errc() && r.ptr == lc.data() + lc.size()) {
      if (idx < -ncols || idx >= ncols) {
        throw InputError(
            fmt::format("{}:{}", name, first_line),
            fmt::format("label_column {} is out of range: the rows have {} columns", idx, ncols),
            fmt::format("columns are numbered 0 to {}; leave label_column out for the last", ncols - 1));
      }
      label = idx < 0 ? ncols + idx : idx;
      return;
    }
    if (!options.header) {
      throw InputError(name, fmt::format("label_column '{}' is a name, but the file has no header row", lc),
                       "give the column's 0-based index, or set header = true");
    }
    for (size_t k = 0; k < names.size(); ++k) {
      if (names[k] != lc) continue;
      // A name the header gives twice does not say which column holds the labels.
      for (size_t j = k + 1; j < names.size(); ++j)
        if (names[j] == lc)
          throw InputError(fmt::format("{}:{}", name, first_line),
                           fmt::format("label_column '{}' names columns {} and {}", lc, k, j),
                           "give the column's 0-based index, or rename one of the columns");
      label = static_cast<int64_t>(k);
      return;
    }
    std::string hint = did_you_mean(lc, names);
    std::string listed;
    for (const auto& n : names) listed += (listed.empty() ? "" : ", ") + n;
    throw InputError(fmt::format("{}:{}", name, first_line),
                     fmt::format("no column is named '{}'; the header has: {}", lc, listed), hint);
  };

  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    split(line, &cells, &unquoted);
    if (ncols < 0) {
      ncols = static_cast<int64_t>(cells.size());
      first_line = line_no;
      if (ncols < 2) {
        throw InputError(fmt::format("{}:{}", name, line_no),
                         fmt::format("the row has {} column; a dataset needs features and a label", ncols),
                         "columns are separated by commas");
      }
      if (options.header) {
        for (const auto& c : cells) names.emplace_back(c.text);
        resolve_label();
        continue;
      }
      resolve_label();
    }
    if (static_cast<int64_t>(cells.size()) != ncols) {
      throw InputError(
          fmt::format("{}:{}", name, line_no),
          fmt::format("the row has {} fields, but {} {} has {}", cells.size(),
                      options.header ? "the header on line" : "the first row, line", first_line, ncols),
          "every row needs the same number of comma-separated fields");
    }
    row.clear();
    for (int64_t k = 0; k < ncols; ++k) {
      const Cell& c = cells[static_cast<size_t>(k)];
      double v = 0;
      if (const CsvNumber n = parse_csv_number(c.text, &v); n != CsvNumber::ok) {
        std::string field =
            k < static_cast<int64_t>(names.size()) ? fmt::format("'{}'", names[k]) : fmt::format("{}", k);
        throw InputError(fmt::format("{}:{}:{}", name, line_no, c.col),
                         c.text.empty() ? fmt::format("column {} is empty", field)
                         : n == CsvNumber::out_of_range
                             ? fmt::format("column {} holds '{}', a number past the range of numbers (about "
                                           "1.8e308)",
                                           field, clipped(c.text))
                             : fmt::format("column {} holds '{}', not a number", field, clipped(c.text)),
                         n == CsvNumber::out_of_range ? "scale the data into float32's range (about 3.4e38)"
                         : first_line == line_no      ? "is this row a header? set header = true"
                         : c.text.empty() ? "every row holds a number in every column: fill or drop this row"
                                          : "CSV data holds numbers only: encode text as numbers first");
      }
      if (k == label) {
        labels.push_back(v);
        integral = integral && v == std::floor(v) && std::abs(v) < 9e15;
      } else {
        row.push_back(static_cast<float>(v));
      }
    }
    features.append(row.data(), row.size() * sizeof(float));
    lines.push_back(line_no);
  }
  if (ncols < 0) throw InputError(name, "the file is empty", "give a CSV file of one sample per row");
  const auto n = static_cast<int64_t>(labels.size());

  Column xs(engine::DType::f32, engine::Shape{ncols - 1});
  xs.add(Segment{features.finish(), 0, static_cast<uint64_t>(ncols - 1) * sizeof(float), n, name, {}});
  // Whole-number labels are class ids; others are regression targets.
  std::vector<uint8_t> label_bytes;
  Column ys(integral ? engine::DType::i64 : engine::DType::f32, engine::Shape{});
  label_bytes.resize(static_cast<size_t>(n) * (integral ? 8 : 4));
  for (int64_t i = 0; i < n; ++i) {
    if (integral) {
      auto v = static_cast<int64_t>(labels[static_cast<size_t>(i)]);
      std::memcpy(label_bytes.data() + 8 * i, &v, 8);
    } else {
      auto v = static_cast<float>(labels[static_cast<size_t>(i)]);
      std::memcpy(label_bytes.data() + 4 * i, &v, 4);
    }
  }
  ys.add(
      Segment{Bytes::from_vector(std::move(label_bytes)), 0, integral ? 8u : 4u, n, name, std::move(lines)});
  x->append(std::move(xs));
  y->append(std::move(ys));
}

}  // namespace trainer::formats
