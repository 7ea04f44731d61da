// XXH64, the 64-bit xxHash, as a streaming digest: the checksum of checkpoint files. Written from the
// published algorithm so that the format needs no hashing library; tests pin it to the reference vectors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace trainer::formats {

class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t n);
  // The digest of everything passed to update() so far; the state is left unchanged.
  uint64_t digest() const;

 private:
  uint64_t seed_;
  uint64_t acc_[4];
  uint64_t total_bytes_ = 0;
  unsigned char stripe_[32];
  size_t stripe_bytes_ = 0;  // bytes waiting in stripe_
};

uint64_t xxh64(const void* data, size_t n, uint64_t seed = 0);

// 16 lowercase hex digits.
std::string hex64(uint64_t v);

}  // namespace trainer::formats
