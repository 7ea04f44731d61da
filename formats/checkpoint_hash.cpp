// XXH64: 32-byte stripes folded into four accumulators, then the tail, then a final avalanche.
#include "formats/checkpoint_hash.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>

namespace trainer::formats {

namespace {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kPrime4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kPrime5 = 0x27D4EB2F165667C5ULL;

static_assert(std::endian::native == std::endian::little, "the lanes are read as little-endian words");

uint64_t load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint32_t load32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

uint64_t mix_lane(uint64_t acc, uint64_t lane) {
  acc += lane * kPrime2;
  acc = std::rotl(acc, 31);
  return acc * kPrime1;
}

uint64_t merge_accumulator(uint64_t h, uint64_t acc) {
  h ^= mix_lane(0, acc);
  return h * kPrime1 + kPrime4;
}

void consume_stripe(uint64_t* acc, const unsigned char* p) {
  for (int i = 0; i < 4; ++i) acc[i] = mix_lane(acc[i], load64(p + 8 * i));
}

}  // namespace

Xxh64::Xxh64(uint64_t seed) : seed_(seed) {
  acc_[0] = seed + kPrime1 + kPrime2;
  acc_[1] = seed + kPrime2;
  acc_[2] = seed;
  acc_[3] = seed - kPrime1;
}

void Xxh64::update(const void* data, size_t n) {
  if (n == 0) return;  // an empty tensor's data may be null, which memcpy must not get
  const auto* p = static_cast<const unsigned char*>(data);
  total_bytes_ += n;
  if (stripe_bytes_ > 0) {
    size_t take = std::min(n, sizeof(stripe_) - stripe_bytes_);
    std::memcpy(stripe_ + stripe_bytes_, p, take);
    stripe_bytes_ += take;
    p += take;
    n -= take;
    if (stripe_bytes_ < sizeof(stripe_)) return;
    consume_stripe(acc_, stripe_);
    stripe_bytes_ = 0;
  }
  for (; n >= 32; p += 32, n -= 32) consume_stripe(acc_, p);
  if (n > 0) {
    std::memcpy(stripe_, p, n);
    stripe_bytes_ = n;
  }
}

uint64_t Xxh64::digest() const {
  uint64_t h;
  if (total_bytes_ >= 32) {
    h = std::rotl(acc_[0], 1) + std::rotl(acc_[1], 7) + std::rotl(acc_[2], 12) + std::rotl(acc_[3], 18);
    for (uint64_t a : acc_) h = merge_accumulator(h, a);
  } else {
    h = seed_ + kPrime5;
  }
  h += total_bytes_;
  const unsigned char* p = stripe_;
  size_t n = stripe_bytes_;
  for (; n >= 8; p += 8, n -= 8) {
    h ^= mix_lane(0, load64(p));
    h = std::rotl(h, 27) * kPrime1 + kPrime4;
  }
  if (n >= 4) {
    h ^= uint64_t{load32(p)} * kPrime1;
    h = std::rotl(h, 23) * kPrime2 + kPrime3;
    p += 4;
    n -= 4;
  }
  for (; n > 0; ++p, --n) {
    h ^= *p * kPrime5;
    h = std::rotl(h, 11) * kPrime1;
  }
  h ^= h >> 33;
  h *= kPrime2;
  h ^= h >> 29;
  h *= kPrime3;
  h ^= h >> 32;
  return h;
}

uint64_t xxh64(const void* data, size_t n, uint64_t seed) {
  Xxh64 h(seed);
  h.update(data, n);
  return h.digest();
}

std::string hex64(uint64_t v) {
  return fmt::format("{:016x}", v);
}

}  // namespace trainer::formats
