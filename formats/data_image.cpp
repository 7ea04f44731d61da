// Image data: folders of class folders of PNG, JPEG, BMP and GIF files, decoded with libpng, libjpeg, our BMP
// reader and giflib, resized to the model's input.
#include "formats/data_image.h"

#include <fmt/format.h>
#include <gif_lib.h>
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

// ---- BMP ----

// A colour channel under a bit mask, scaled to 8 bits as Pillow scales it, rounding down (a 5-bit field of 31
// is 255, of 3 is 24).
struct MaskField {
  uint32_t mask = 0;
  int shift = 0;
  uint32_t max = 0;
  explicit MaskField(uint32_t m) : mask(m) {
    if (!m) return;
    while (!((m >> shift) & 1u)) ++shift;
    max = m >> shift;
  }
  uint8_t operator()(uint32_t v) const {
    if (!mask) return 0;
    return static_cast<uint8_t>(uint64_t{(v & mask) >> shift} * 255 / max);
  }
};

// Windows bitmaps as Pillow reads them: the core (OS/2) and info headers (40 to 124 bytes), 1, 4 and 8 bits
// through the colour table, 16 bits (5-5-5, or bit fields), 24 bits, and 32 bits (BGR and an unused byte,
// or bit fields with alpha when the header gives an alpha mask); rows bottom-up, or top-down when the height
// is negative. Run-length compressed files are refused.
Image decode_bmp(const std::string& path, const std::vector<uint8_t>& b, int channels) {
  auto damaged = [&](const std::string& what) {
    return InputError(path, fmt::format("BMP image cannot be decoded: {}", what),
                      "the file is damaged or cut short: write it again, or remove it from the class folder");
  };
  if (b.size() < 26) throw damaged("it is too short for its headers");
  const uint32_t header = le32(b.data() + 14);
  size_t pixels_at = le32(b.data() + 10);
  const bool core = header == 12;
  if (!core && (header < 40 || header > 124)) throw damaged(fmt::format("header of {} bytes", header));
  if (b.size() < 14 + size_t{header}) throw damaged("it is too short for its headers");
  const int64_t width = core ? le16(b.data() + 18) : static_cast<int32_t>(le32(b.data() + 18));
  const int64_t signed_height = core ? le16(b.data() + 20) : static_cast<int32_t>(le32(b.data() + 22));
  const int bits = core ? le16(b.data() + 24) : le16(b.data() + 28);
  const uint32_t compression = core ? 0 : le32(b.data() + 30);
  const int64_t height = signed_height < 0 ? -signed_height : signed_height;
  if (width <= 0 || height == 0) throw damaged(fmt::format("a size of {} by {} pixels", width, height));
  if (static_cast<uint64_t>(width) * static_cast<uint64_t>(height) > kMaxImagePixels)
    throw InputError(path,
                     fmt::format("is an image of {} by {} pixels, more than {} million", width, height,
                                 kMaxImagePixels / 1000000),
                     "resize it first: images are decoded whole");
  if (compression == 1 || compression == 2)
    throw InputError(path, "is a run-length compressed BMP, which is not read",
                     "save it as an uncompressed BMP, or as a PNG");
  const bool fields = compression == 3 || compression == 6;
  if (compression != 0 && !fields)
    throw InputError(path, fmt::format("is a BMP of compression type {}, which is not read", compression),
                     "save it as an uncompressed BMP, or as a PNG");
  if (bits != 1 && bits != 4 && bits != 8 && bits != 16 && bits != 24 && bits != 32)
    throw damaged(fmt::format("{} bits per pixel", bits));
  if (fields && bits <= 8) throw damaged(fmt::format("bit fields at {} bits per pixel", bits));

  // Bit masks: in the header from 52 bytes on, else just after a 40-byte header.
  uint32_t masks[4] = {0x7C00, 0x03E0, 0x001F, 0};  // 16 bits without fields: 5-5-5
  if (bits >= 24) masks[0] = 0xFF0000, masks[1] = 0xFF00, masks[2] = 0xFF;
  size_t table_at = 14 + header;
  if (fields) {
    const int count = header >= 56 || compression == 6 ? 4 : 3;
    const size_t at = 54;
    if (header == 40) table_at += 4 * static_cast<size_t>(compression == 6 ? 4 : 3);
    if (b.size() < at + 4 * static_cast<size_t>(count)) throw damaged("it is too short for its bit masks");
    for (int k = 0; k < count; ++k) masks[k] = le32(b.data() + at + 4 * static_cast<size_t>(k));
    // No masks at all at 32 bits: Pillow reads BGRA.
    if (bits == 32 && !masks[0] && !masks[1] && !masks[2] && !masks[3])
      masks[0] = 0xFF0000, masks[1] = 0xFF00, masks[2] = 0xFF, masks[3] = 0xFF000000;
  }
  const bool alpha = fields && masks[3] != 0;

  // The colour table of a paletted image: 3-byte entries after a core header, 4-byte ones otherwise.
  std::vector<uint8_t> palette;  // RGB triples
  if (bits <= 8) {
    const size_t entry = core ? 3 : 4;
    const size_t declared = core ? 0 : std::min<size_t>(le32(b.data() + 46), 256);
    size_t count = declared == 0 || declared > (size_t{1} << bits) ? size_t{1} << bits : declared;
    // A table cut short by the pixel data (some writers list fewer colours) keeps the entries before it; a
    // pixel offset at or before the table's start (0, or the header's end, from writers that leave the table
    // out of it) means the pixels follow the whole table, as long as the header declares it (a 1-bit image
    // may list 256 colours, as Pillow skips them).
    if (pixels_at > table_at) count = std::min(count, (pixels_at - table_at) / entry);
    if (b.size() < table_at + count * entry) throw damaged("it is too short for its colour table");
    if (pixels_at <= table_at) {
      const size_t listed = std::max(count, declared);
      pixels_at = table_at + (b.size() >= table_at + listed * entry ? listed : count) * entry;
    }
    for (size_t k = 0; k < count; ++k) {
      const size_t at = table_at + k * entry;
      palette.insert(palette.end(), {b[at + 2], b[at + 1], b[at]});
    }
  }

  if (pixels_at < table_at) pixels_at = table_at;  // an offset into the headers: the pixels follow them
  const uint64_t stride = (static_cast<uint64_t>(bits) * static_cast<uint64_t>(width) + 31) / 32 * 4;
  if (pixels_at > b.size() || (b.size() - pixels_at) / stride < static_cast<uint64_t>(height))
    throw damaged(fmt::format("it holds {} bytes of pixels where {} rows of {} bytes need {}",
                              b.size() - std::min<size_t>(pixels_at, b.size()), height, stride,
                              stride * static_cast<uint64_t>(height)));
  const MaskField red(masks[0]), green(masks[1]), blue(masks[2]), opacity(masks[3]);
  const int from = alpha ? 4 : 3;
  std::vector<uint8_t> row(static_cast<size_t>(width * from));
  Image img;
  img.height = height;
  img.width = width;
  img.channels = channels;
  img.pixels.resize(static_cast<size_t>(height * width * channels));
  for (int64_t y = 0; y < height; ++y) {
    const int64_t stored = signed_height < 0 ? y : height - 1 - y;
    const uint8_t* src = b.data() + pixels_at + static_cast<uint64_t>(stored) * stride;
    for (int64_t x = 0; x < width; ++x) {
      uint8_t* px = row.data() + x * from;
      if (bits <= 8) {
        const int64_t bit = x * bits;
        const unsigned index = (src[bit / 8] >> (8 - bits - bit % 8)) & ((1u << bits) - 1);
        // An index past a short table is black, as in Pillow's palette (padded with zeros).
        if (3 * size_t{index} + 2 < palette.size())
          std::copy_n(palette.data() + 3 * size_t{index}, 3, px);
        else
          px[0] = px[1] = px[2] = 0;
      } else if (bits == 24 && !fields) {
        px[0] = src[3 * x + 2], px[1] = src[3 * x + 1], px[2] = src[3 * x];
      } else {
        const int bytes = bits / 8;
        uint32_t v = 0;
        for (int k = 0; k < bytes; ++k) v |= uint32_t{src[bytes * x + k]} << (8 * k);
        px[0] = red(v), px[1] = green(v), px[2] = blue(v);
        if (alpha) px[3] = opacity(v);
      }
    }
    convert_channels(row.data(), from, img.pixels.data() + y * width * channels, channels, width);
  }
  return img;
}

// ---- GIF ----

struct GifSource {
  const std::vector<uint8_t>* bytes;
  size_t at = 0;
};

int gif_read(GifFileType* gif, GifByteType* out, int n) {
  auto* src = static_cast<GifSource*>(gif->UserData);
  const size_t k = std::min(static_cast<size_t>(n), src->bytes->size() - src->at);
  std::memcpy(out, src->bytes->data() + src->at, k);
  src->at += k;
  return static_cast<int>(k);
}

// The first frame of a GIF (Keras reads no animation), on its logical screen: pixels the frame leaves out
// and its transparent colour are black and transparent, as TensorFlow's first frame has them.
Image decode_gif(const std::string& path, const std::vector<uint8_t>& bytes, int channels) {
  GifSource src{&bytes};
  int error = 0;
  GifFileType* gif = DGifOpen(&src, gif_read, &error);
  auto damaged = [&](int code) {
    const char* what = GifErrorString(code);
    return InputError(path, fmt::format("GIF image cannot be decoded: {}", what ? what : "unknown error"),
                      "the file is damaged or cut short: write it again, or remove it from the class folder");
  };
  if (!gif) throw damaged(error);
  const std::unique_ptr<GifFileType, void (*)(GifFileType*)> owner(gif, [](GifFileType* g) {
    int e = 0;
    DGifCloseFile(g, &e);
  });
  int transparent = -1;
  for (;;) {
    GifRecordType type = UNDEFINED_RECORD_TYPE;
    if (DGifGetRecordType(gif, &type) == GIF_ERROR) throw damaged(gif->Error);
    if (type == TERMINATE_RECORD_TYPE)
      throw InputError(path, "is a GIF without an image", "remove it from the class folder");
    if (type == EXTENSION_RECORD_TYPE) {
      int code = 0;
      GifByteType* ext = nullptr;
      if (DGifGetExtension(gif, &code, &ext) == GIF_ERROR) throw damaged(gif->Error);
      if (code == GRAPHICS_EXT_FUNC_CODE && ext && ext[0] >= 4) {
        GraphicsControlBlock gcb{};
        if (DGifExtensionToGCB(ext[0], ext + 1, &gcb) == GIF_OK) transparent = gcb.TransparentColor;
      }
      while (ext)
        if (DGifGetExtensionNext(gif, &ext) == GIF_ERROR) throw damaged(gif->Error);
      continue;
    }
    if (type != IMAGE_DESC_RECORD_TYPE) continue;
    if (DGifGetImageDesc(gif) == GIF_ERROR) throw damaged(gif->Error);
    const GifImageDesc& d = gif->Image;
    // The screen, widened to hold a frame that overhangs it (as decoders commonly do).
    const int64_t screen_w = std::max<int64_t>(gif->SWidth, int64_t{d.Left} + d.Width);
    const int64_t screen_h = std::max<int64_t>(gif->SHeight, int64_t{d.Top} + d.Height);
    if (d.Width <= 0 || d.Height <= 0 || d.Left < 0 || d.Top < 0)
      throw InputError(
          path, fmt::format("GIF image cannot be decoded: a frame of {} by {} pixels", d.Width, d.Height),
          "the file is damaged: write it again, or remove it from the class folder");
    if (static_cast<uint64_t>(screen_w) * static_cast<uint64_t>(screen_h) > kMaxImagePixels)
      throw InputError(path,
                       fmt::format("is an image of {} by {} pixels, more than {} million", screen_w, screen_h,
                                   kMaxImagePixels / 1000000),
                       "resize it first: images are decoded whole");
    const ColorMapObject* map = d.ColorMap ? d.ColorMap : gif->SColorMap;
    if (!map)
      throw InputError(path, "GIF image cannot be decoded: it has no colour table",
                       "the file is damaged: write it again, or remove it from the class folder");
    // Rows in the order they are stored: interlaced images in four passes.
    std::vector<GifPixelType> index(static_cast<size_t>(d.Width) * static_cast<size_t>(d.Height));
    std::vector<int> order;
    if (d.Interlace) {
      for (const auto& [first, step] : {std::pair{0, 8}, {4, 8}, {2, 4}, {1, 2}})
        for (int y = first; y < d.Height; y += step) order.push_back(y);
    } else {
      for (int y = 0; y < d.Height; ++y) order.push_back(y);
    }
    for (int y : order)
      if (DGifGetLine(gif, index.data() + static_cast<size_t>(y) * d.Width, d.Width) == GIF_ERROR)
        throw damaged(gif->Error);
    std::vector<uint8_t> rgba(static_cast<size_t>(screen_w * screen_h * 4), 0);
    for (int y = 0; y < d.Height; ++y)
      for (int x = 0; x < d.Width; ++x) {
        const int k = index[static_cast<size_t>(y) * d.Width + x];
        if (k == transparent) continue;
        if (k >= map->ColorCount)
          throw InputError(
              path,
              fmt::format("GIF image cannot be decoded: colour {} of a table of {}", k, map->ColorCount),
              "the file is damaged: write it again, or remove it from the class folder");
        uint8_t* px = rgba.data() + ((d.Top + y) * screen_w + d.Left + x) * 4;
        px[0] = map->Colors[k].Red, px[1] = map->Colors[k].Green, px[2] = map->Colors[k].Blue, px[3] = 255;
      }
    Image img;
    img.height = screen_h;
    img.width = screen_w;
    img.channels = channels;
    img.pixels.resize(static_cast<size_t>(screen_h * screen_w * channels));
    convert_channels(rgba.data(), 4, img.pixels.data(), channels, screen_h * screen_w);
    return img;
  }
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
  if (bytes.size() >= 6 &&
      (std::memcmp(bytes.data(), "GIF87a", 6) == 0 || std::memcmp(bytes.data(), "GIF89a", 6) == 0))
    return decode_gif(path, bytes, channels);
  if (bytes.size() >= 2 && bytes[0] == 'B' && bytes[1] == 'M') return decode_bmp(path, bytes, channels);
  throw InputError(path, "is not a PNG, JPEG, BMP or GIF image (by its first bytes)",
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
         ends_with_any_case(path, ".jpeg") || ends_with_any_case(path, ".bmp") ||
         ends_with_any_case(path, ".gif");
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
      throw InputError(p, "is a folder without .png, .jpg, .bmp or .gif images",
                       "give image files, or a folder of them");
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
      ".png, .jpg, .bmp or .gif images", training_classes, classes_named);
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
