// Image data: folders of class folders of PNG and JPEG files, decoded with libpng and libjpeg, resized to the
// model's input.
#include "formats/data_image.h"

#include <fmt/format.h>
#include <png.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
// jpeglib.h needs size_t and FILE declared before it.
// clang-format off
#include <cstddef>
#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

#include "engine/util/error.h"
#include "formats/data_array.h"
#include "formats/data_text.h"
#include "formats/datasets.h"
#include "formats/stream_output.h"

namespace trainer::formats {

namespace {

// The most pixels an image may declare (Pillow's limit is about 89 million): a damaged or hostile header
// must not make the reader allocate gigabytes.
constexpr uint64_t kMaxImagePixels = 178956970;

// Pixels of `from` channels (1 grey, 2 grey and alpha, 3 RGB, 4 RGBA) as `to` channels: grey from colour by
// ITU-R BT.601's weights (TensorFlow's rgb_to_grayscale), alpha dropped or added opaque.
void convert_channels(const uint8_t* in, int from, uint8_t* out, int to, int64_t pixels) {
  for (int64_t p = 0; p < pixels; ++p, in += from, out += to) {
    const bool colour = from >= 3;
    const uint8_t alpha = from == 2 ? in[1] : from == 4 ? in[3] : 255;
    if (to == 1) {
      out[0] =
          colour ? static_cast<uint8_t>(std::lround(0.2989 * in[0] + 0.587 * in[1] + 0.114 * in[2])) : in[0];
    } else {
      for (int c = 0; c < 3; ++c) out[c] = colour ? in[c] : in[0];
      if (to == 4) out[3] = alpha;
    }
  }
}

Image decode_png(const std::string& path, const std::vector<uint8_t>& bytes, int channels) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size()))
    throw InputError(path, fmt::format("is not a PNG image libpng can read: {}", png.message),
                     "the file is damaged or not a PNG: convert it, or remove it from the class folder");
  // Colour sources are read with alpha, grey ones with theirs: converted here, never composited. 16-bit
  // samples, which libpng's simplified reader takes for linear light, are read as they are (16 bits, no
  // alpha: a transparent pixel composited on black) and scaled here, as other decoders read them.
  const bool colour = (png.format & PNG_FORMAT_FLAG_COLOR) != 0;
  const bool deep = (png.format & PNG_FORMAT_FLAG_LINEAR) != 0;
  png.format = deep     ? (colour ? PNG_FORMAT_LINEAR_RGB : PNG_FORMAT_LINEAR_Y)
               : colour ? PNG_FORMAT_RGBA
                        : PNG_FORMAT_GA;
  const int from = deep ? (colour ? 3 : 1) : colour ? 4 : 2;
  if (static_cast<uint64_t>(png.width) * png.height > kMaxImagePixels) {
    png_image_free(&png);
    throw InputError(path,
                     fmt::format("is an image of {} by {} pixels, more than {} million", png.width,
                                 png.height, kMaxImagePixels / 1000000),
                     "resize it first: images are decoded whole");
  }
  std::vector<uint8_t> raw(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, raw.data(), 0, nullptr)) {
    const std::string message = png.message;
    png_image_free(&png);
    throw InputError(path, fmt::format("PNG image cannot be decoded: {}", message),
                     "the file is damaged or cut short: write it again, or remove it from the class folder");
  }
  if (deep) {  // 16 bits (host order) to 8, rounded
    const size_t n = raw.size() / 2;
    for (size_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, raw.data() + 2 * i, 2);
      raw[i] = static_cast<uint8_t>((uint32_t{v} * 255 + 32767) / 65535);
    }
    raw.resize(n);
  }
  Image img;
  img.height = png.height;
  img.width = png.width;
  img.channels = channels;
  img.pixels.resize(static_cast<size_t>(img.height * img.width * channels));
  convert_channels(raw.data(), from, img.pixels.data(), channels, img.height * img.width);
  return img;
}

// libjpeg reports errors through error_exit, which must not return: it jumps back to the decoder.
struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegError*>(c->err);
  (*c->err->format_message)(c, e->message);
  std::longjmp(e->jump, 1);
}

// Warnings (extraneous bytes, ...) are not errors, but data that ends early is: libjpeg would fill the
// missing rows with grey.
void jpeg_warning(j_common_ptr c, int level) {
  if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(c);
}

Image decode_jpeg(const std::string& path, const std::vector<uint8_t>& bytes, int channels) {
  jpeg_decompress_struct info{};
  JpegError err{};
  info.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.emit_message = jpeg_warning;
  // What the jump leaves behind is freed by the throw that follows it: the objects live on the heap, their
  // owners made before setjmp and never changed after it (a local changed in between is indeterminate).
  const auto img = std::make_unique<Image>();
  const auto row = std::make_unique<std::vector<uint8_t>>();
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&info);
    throw InputError(
        path, fmt::format("JPEG image cannot be decoded: {}", err.message),
        "the file is damaged, cut short or not a JPEG: write it again, or remove it from the class "
        "folder");
  }
  jpeg_create_decompress(&info);
  jpeg_mem_src(&info, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&info, TRUE);
  const bool grey = info.jpeg_color_space == JCS_GRAYSCALE;
  if (!grey && info.jpeg_color_space != JCS_YCbCr && info.jpeg_color_space != JCS_RGB) {
    jpeg_destroy_decompress(&info);
    throw InputError(path, "is a CMYK or YCCK JPEG, which is not read", "save it as an RGB JPEG or a PNG");
  }
  info.out_color_space = grey ? JCS_GRAYSCALE : JCS_RGB;
  if (static_cast<uint64_t>(info.image_width) * info.image_height > kMaxImagePixels) {
    jpeg_destroy_decompress(&info);
    throw InputError(path,
                     fmt::format("is an image of {} by {} pixels, more than {} million", info.image_width,
                                 info.image_height, kMaxImagePixels / 1000000),
                     "resize it first: images are decoded whole");
  }
  jpeg_start_decompress(&info);
  const int from = grey ? 1 : 3;
  img->height = info.output_height;
  img->width = info.output_width;
  img->channels = channels;
  img->pixels.resize(static_cast<size_t>(img->height * img->width * channels));
  row->resize(static_cast<size_t>(img->width * from));
  while (info.output_scanline < info.output_height) {
    const int64_t y = info.output_scanline;
    JSAMPROW rows[1] = {row->data()};
    jpeg_read_scanlines(&info, rows, 1);
    convert_channels(row->data(), from, img->pixels.data() + y * img->width * channels, channels, img->width);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return std::move(*img);
}

}  // namespace

Image decode_image(const std::string& path, int channels) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f)
    throw InputError(
        path, errno == ENOENT ? "does not exist" : fmt::format("cannot be read: {}", std::strerror(errno)),
        errno == ENOENT ? "check the path" : "check the file's permissions");
  std::vector<uint8_t> bytes;
  uint8_t buf[65536];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) bytes.insert(bytes.end(), buf, buf + n);
  std::fclose(f);
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), "\x89PNG\r\n\x1a\n", 8) == 0)
    return decode_png(path, bytes, channels);
  if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF)
    return decode_jpeg(path, bytes, channels);
  throw InputError(path, "is neither a PNG nor a JPEG image (by its first bytes)",
                   "convert it to PNG or JPEG, or remove it from the class folder");
}

void resize_image(const Image& in, int64_t height, int64_t width, uint8_t* out) {
  const int64_t c = in.channels;
  if (in.height == height && in.width == width) {
    std::copy(in.pixels.begin(), in.pixels.end(), out);
    return;
  }
  // Each output row and column: its two source neighbours and the weight of the second.
  struct Tap {
    int64_t lo, hi;
    double t;
  };
  auto taps = [](int64_t n_in, int64_t n_out) {
    std::vector<Tap> v(static_cast<size_t>(n_out));
    const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
    for (int64_t i = 0; i < n_out; ++i) {
      const double src = std::clamp((i + 0.5) * scale - 0.5, 0.0, static_cast<double>(n_in - 1));
      const auto lo = static_cast<int64_t>(std::floor(src));
      v[static_cast<size_t>(i)] = {lo, std::min(lo + 1, n_in - 1), src - static_cast<double>(lo)};
    }
    return v;
  };
  const std::vector<Tap> ys = taps(in.height, height), xs = taps(in.width, width);
  const uint8_t* p = in.pixels.data();
  for (int64_t y = 0; y < height; ++y) {
    const Tap& ty = ys[static_cast<size_t>(y)];
    for (int64_t x = 0; x < width; ++x) {
      const Tap& tx = xs[static_cast<size_t>(x)];
      for (int64_t k = 0; k < c; ++k) {
        auto at = [&](int64_t r, int64_t q) { return static_cast<double>(p[(r * in.width + q) * c + k]); };
        const double top = at(ty.lo, tx.lo) * (1 - tx.t) + at(ty.lo, tx.hi) * tx.t;
        const double bottom = at(ty.hi, tx.lo) * (1 - tx.t) + at(ty.hi, tx.hi) * tx.t;
        const double v = top * (1 - ty.t) + bottom * ty.t;
        // Halves round up, the same whatever the last bit of the arithmetic (an exact half is common here,
        // and a value that is not one lies further from it than 1e-9).
        out[(y * width + x) * c + k] =
            static_cast<uint8_t>(std::clamp(std::floor(v + 0.5 + 1e-9), 0.0, 255.0));
      }
    }
  }
}

bool is_image_name(const std::string& path) {
  return ends_with_any_case(path, ".png") || ends_with_any_case(path, ".jpg") ||
         ends_with_any_case(path, ".jpeg");
}

std::shared_ptr<const Bytes> images_as_npy(const std::vector<std::string>& paths, int64_t height,
                                           int64_t width, int64_t channels, std::vector<std::string>* files) {
  std::vector<std::string> found;
  for (const std::string& p : paths) {
    std::error_code ec;
    if (!std::filesystem::is_directory(p, ec)) {
      found.push_back(p);
      continue;
    }
    std::vector<std::string> inside;
    for (const auto& e : std::filesystem::directory_iterator(p, ec)) {
      const std::string name = e.path().filename().string();
      if (!name.starts_with(".") && is_image_name(name) && e.is_regular_file(ec))
        inside.push_back(e.path().string());
    }
    if (inside.empty())
      throw InputError(p, "is a folder without .png or .jpg images", "give image files, or a folder of them");
    std::sort(inside.begin(), inside.end(), natural_less);
    found.insert(found.end(), inside.begin(), inside.end());
  }
  const auto record = static_cast<size_t>(height * width * channels);
  const std::string header =
      npy_header(engine::DType::u8, fmt::format("({}, {}, {}, {})", found.size(), height, width, channels));
  std::vector<uint8_t> out(header.begin(), header.end());
  out.resize(header.size() + found.size() * record);
  for (size_t i = 0; i < found.size(); ++i)
    resize_image(decode_image(found[i], static_cast<int>(channels)), height, width,
                 out.data() + header.size() + i * record);
  if (files) *files = std::move(found);
  return Bytes::from_vector(std::move(out));
}

std::shared_ptr<const engine::data::Dataset> open_image_source(
    const DataSource& src, const std::string& base_dir, int64_t height, int64_t width, int64_t channels,
    int64_t spill_bytes, const std::vector<std::string>& training_classes, bool classes_named, bool one_hot) {
  const ClassFiles files = list_class_files(
      src, base_dir, "image", [](const std::string& name) { return is_image_name(name); },
      ".png or .jpg images", training_classes, classes_named);
  const auto n = static_cast<int64_t>(files.files.size());
  const auto record = static_cast<size_t>(height * width * channels);
  SpillWriter pixels(spill_bytes, "decoded images");
  pixels.reserve(static_cast<uint64_t>(n) * record);
  std::vector<uint8_t> resized(record);
  for (const std::string& path : files.files) {
    const Image img = decode_image(path, static_cast<int>(channels));
    resize_image(img, height, width, resized.data());
    pixels.append(resized.data(), record);
  }
  std::shared_ptr<const Bytes> xb = pixels.finish();
  Column x(engine::DType::u8, engine::Shape{height, width, channels});
  for (int64_t i = 0; i < n; ++i)
    x.add({xb, static_cast<uint64_t>(i) * record, record, 1, files.files[static_cast<size_t>(i)], {}});
  Column y =
      class_labels(files.labels, files.files, one_hot ? static_cast<int64_t>(files.class_names.size()) : 0);
  return std::make_shared<ArrayDataset>(
      std::move(x), std::move(y), engine::data::Layout::hwc,
      fmt::format("{} ({} images in {} classes)", fmt::join(src.x, ", "), n, files.class_names.size()));
}

}  // namespace trainer::formats
