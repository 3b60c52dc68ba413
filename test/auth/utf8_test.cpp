#include "dispatchd/auth/utf8.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>

namespace dispatchd::auth {
namespace {

// Bytes given as a string literal with escapes; the length keeps embedded NULs.
template <std::size_t N>
std::string_view bytes(const char (&s)[N]) {
  return std::string_view(s, N - 1);
}

// Go's utf8.ValidString (and so SwarmKit, through protobuf's string fields) is the reference:
// every case here is what it answers.

TEST(Utf8, AcceptsAsciiAndEmpty) {
  EXPECT_TRUE(valid_utf8(""));
  EXPECT_TRUE(valid_utf8("node-1"));
  EXPECT_TRUE(valid_utf8(bytes("\x00")));
  EXPECT_TRUE(valid_utf8("\x7f"));
}

TEST(Utf8, AcceptsEachLengthAtItsBounds) {
  EXPECT_TRUE(valid_utf8("\xc2\x80"));          // U+0080, smallest 2-byte
  EXPECT_TRUE(valid_utf8("\xdf\xbf"));          // U+07FF, largest 2-byte
  EXPECT_TRUE(valid_utf8("\xe0\xa0\x80"));      // U+0800, smallest 3-byte
  EXPECT_TRUE(valid_utf8("\xed\x9f\xbf"));      // U+D7FF, just below the surrogates
  EXPECT_TRUE(valid_utf8("\xee\x80\x80"));      // U+E000, just above them
  EXPECT_TRUE(valid_utf8("\xef\xbf\xbf"));      // U+FFFF
  EXPECT_TRUE(valid_utf8("\xf0\x90\x80\x80"));  // U+10000, smallest 4-byte
  EXPECT_TRUE(valid_utf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF, the last code point
  EXPECT_TRUE(
      valid_utf8("n\xc3\xb6"
                 "de-\xe2\x82\xac-\xf0\x9f\x90\xb3"));  // mixed: ö € 🐳
}

TEST(Utf8, RejectsOverlongEncodings) {
  EXPECT_FALSE(valid_utf8("\xc0\x80"));          // U+0000 in two bytes
  EXPECT_FALSE(valid_utf8("\xc1\xbf"));          // U+007F in two bytes
  EXPECT_FALSE(valid_utf8("\xe0\x80\x80"));      // U+0000 in three bytes
  EXPECT_FALSE(valid_utf8("\xe0\x9f\xbf"));      // U+07FF in three bytes
  EXPECT_FALSE(valid_utf8("\xf0\x80\x80\x80"));  // U+0000 in four bytes
  EXPECT_FALSE(valid_utf8("\xf0\x8f\xbf\xbf"));  // U+FFFF in four bytes
  EXPECT_FALSE(
      valid_utf8("a\xc0\xaf"
                 "b"));  // overlong '/' between valid bytes
}

TEST(Utf8, RejectsSurrogates) {
  EXPECT_FALSE(valid_utf8("\xed\xa0\x80"));              // U+D800, first high surrogate
  EXPECT_FALSE(valid_utf8("\xed\xaf\xbf"));              // U+DBFF
  EXPECT_FALSE(valid_utf8("\xed\xb0\x80"));              // U+DC00, first low surrogate
  EXPECT_FALSE(valid_utf8("\xed\xbf\xbf"));              // U+DFFF, last surrogate
  EXPECT_FALSE(valid_utf8("\xed\xa0\xbd\xed\xb0\xb3"));  // a CESU-8 surrogate pair
}

TEST(Utf8, RejectsCodePointsAboveU10FFFF) {
  EXPECT_FALSE(valid_utf8("\xf4\x90\x80\x80"));          // U+110000
  EXPECT_FALSE(valid_utf8("\xf5\x80\x80\x80"));          // lead byte F5: above U+13FFFF
  EXPECT_FALSE(valid_utf8("\xf7\xbf\xbf\xbf"));          // U+1FFFFF
  EXPECT_FALSE(valid_utf8("\xf8\x88\x80\x80\x80"));      // old 5-byte form
  EXPECT_FALSE(valid_utf8("\xfc\x84\x80\x80\x80\x80"));  // old 6-byte form
  EXPECT_FALSE(valid_utf8("\xfe"));
  EXPECT_FALSE(valid_utf8("\xff"));
}

TEST(Utf8, RejectsBrokenSequences) {
  EXPECT_FALSE(valid_utf8("\x80"));                  // continuation byte alone
  EXPECT_FALSE(valid_utf8("a\xbf"));                 // continuation byte after ASCII
  EXPECT_FALSE(valid_utf8("\xc2"));                  // truncated 2-byte
  EXPECT_FALSE(valid_utf8("\xe2\x82"));              // truncated 3-byte
  EXPECT_FALSE(valid_utf8("\xf0\x9f\x90"));          // truncated 4-byte
  EXPECT_FALSE(valid_utf8("\xc2\x41"));              // second byte not a continuation
  EXPECT_FALSE(valid_utf8("\xe2\x28\xa1"));          // second byte not a continuation
  EXPECT_FALSE(valid_utf8("\xe2\x82\x28"));          // third byte not a continuation
  EXPECT_FALSE(valid_utf8("\xf0\x9f\x90\x28"));      // fourth byte not a continuation
  EXPECT_FALSE(valid_utf8("\xf0\x9f\x90\xb3\x80"));  // one continuation byte too many
}

}  // namespace
}  // namespace dispatchd::auth
