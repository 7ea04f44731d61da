// Image data, as Keras's image_dataset_from_directory gives it: folders of class folders of PNG, JPEG, BMP
// and GIF files, each decoded, resized to the model's input and labelled by its folder.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "formats/data_bytes.h"
#include "formats/model_spec.h"

namespace trainer::formats {

// An image's pixels, 8 bits per channel, rows top to bottom, channels last.
struct Image {
  int64_t height = 0, width = 0, channels = 0;
  std::vector<uint8_t> pixels;
};

// Decodes a PNG, JPEG, BMP or GIF file (told by its first bytes; a GIF's first frame) into `channels`
// channels: 1 grey, 3 RGB, 4 RGBA (colour turned grey, grey spread to RGB, alpha added opaque or dropped, as
// Keras's color_mode does; a PNG of 16 bits per channel is scaled to 8). A file of another format, or
// damaged, is an InputError naming it.
Image decode_image(const std::string& path, int channels);

// Bilinear resizing with half-pixel centres, as Keras resizes (TensorFlow's resize without antialiasing),
// rounded to 8 bits; an image of the size already is copied.
void resize_image(const Image& in, int64_t height, int64_t width, uint8_t* out);

// The images of a source of folders of class folders (list_class_files, data_text.h): .png, .jpg, .jpeg, .bmp
// and .gif files (any case), each decoded to `channels` and resized to height x width: u8 [height, width,
// channels] samples (channels last), int64 labels (one-hot f32 rows with `one_hot`), located by file. Large
// sets go to a temporary file past `spill_bytes`.
std::shared_ptr<const engine::data::Dataset> open_image_source(
    const DataSource& src, const std::string& base_dir, int64_t height, int64_t width, int64_t channels,
    int64_t spill_bytes = kDefaultSpillBytes, const std::vector<std::string>& training_classes = {},
    bool classes_named = false, bool one_hot = false);

// Whether a path names an image file by its name (.png, .jpg, .jpeg, .bmp, .gif, any case).
bool is_image_name(const std::string& path);

// The images that `paths` name (image files, and folders, whose image files are taken in natural order of
// their names, hidden ones left out), decoded and resized as open_image_source does, as the bytes of one NPY
// array u8 [N, height, width, channels] (trainer predict's input); `files` gets their paths in that order.
std::shared_ptr<const Bytes> images_as_npy(const std::vector<std::string>& paths, int64_t height,
                                           int64_t width, int64_t channels,
                                           std::vector<std::string>* files = nullptr);

}  // namespace trainer::formats
