// Lexical checks of FHIR primitive values. Hand-written checkers for every R4 primitive (they run
// on every element of every write, and std::regex is slow); each follows the official regex of
// the type (type_def::regex), plus the range checks the regexes cannot express (days in the month,
// 32-bit integers, control characters). tests/fhir-model/validator_test.cpp checks them against
// the official regexes. A type without a checker (none in R4) is checked as a string.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "yilian/fhir/validator.hpp"

namespace yilian::fhir {
namespace {

constexpr std::size_t max_string_bytes = 1024 * 1024;

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

// Reads exactly n digits at pos; advances pos.
bool digits(std::string_view s, std::size_t& pos, std::size_t n, int& out) noexcept {
  if (pos + n > s.size()) return false;
  int v = 0;
  for (std::size_t i = 0; i < n; ++i) {
    char c = s[pos + i];
    if (!is_digit(c)) return false;
    v = v * 10 + (c - '0');
  }
  pos += n;
  out = v;
  return true;
}

int days_in_month(int year, int month) noexcept {
  static constexpr int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month == 2 && ((year % 4 == 0 && year % 100 != 0) || year % 400 == 0)) return 29;
  return days[month - 1];
}

// YYYY, YYYY-MM or YYYY-MM-DD starting at pos; `parts` receives how many were present.
bool date_part(std::string_view s, std::size_t& pos, int& parts) noexcept {
  int year = 0, month = 0, day = 0;
  if (!digits(s, pos, 4, year) || year == 0) return false;
  parts = 1;
  if (pos == s.size() || s[pos] != '-') return true;
  ++pos;
  if (!digits(s, pos, 2, month) || month < 1 || month > 12) return false;
  parts = 2;
  if (pos == s.size() || s[pos] != '-') return true;
  ++pos;
  if (!digits(s, pos, 2, day) || day < 1 || day > days_in_month(year, month)) return false;
  parts = 3;
  return true;
}

// hh:mm:ss(.fraction)? at pos.
bool time_part(std::string_view s, std::size_t& pos) noexcept {
  int h = 0, m = 0, sec = 0;
  if (!digits(s, pos, 2, h) || h > 23) return false;
  if (pos == s.size() || s[pos++] != ':') return false;
  if (!digits(s, pos, 2, m) || m > 59) return false;
  if (pos == s.size() || s[pos++] != ':') return false;
  if (!digits(s, pos, 2, sec) || sec > 60) return false;
  if (pos < s.size() && s[pos] == '.') {
    ++pos;
    std::size_t start = pos;
    while (pos < s.size() && is_digit(s[pos])) ++pos;
    if (pos == start) return false;
  }
  return true;
}

// Z or (+|-)hh:mm with hh 00-13 or 14:00, ending the string.
bool zone_part(std::string_view s, std::size_t pos) noexcept {
  if (pos >= s.size()) return false;
  if (s[pos] == 'Z') return pos + 1 == s.size();
  if (s[pos] != '+' && s[pos] != '-') return false;
  ++pos;
  int h = 0, m = 0;
  if (!digits(s, pos, 2, h)) return false;
  if (pos == s.size() || s[pos++] != ':') return false;
  if (!digits(s, pos, 2, m) || m > 59) return false;
  if (h > 14 || (h == 14 && m != 0)) return false;
  return pos == s.size();
}

bool check_date(std::string_view s) noexcept {
  std::size_t pos = 0;
  int parts = 0;
  return date_part(s, pos, parts) && pos == s.size();
}

bool check_date_time(std::string_view s) noexcept {
  std::size_t pos = 0;
  int parts = 0;
  if (!date_part(s, pos, parts)) return false;
  if (pos == s.size()) return true;
  if (parts != 3 || s[pos++] != 'T') return false;
  return time_part(s, pos) && zone_part(s, pos);
}

bool check_instant(std::string_view s) noexcept {
  std::size_t pos = 0;
  int parts = 0;
  if (!date_part(s, pos, parts) || parts != 3) return false;
  if (pos == s.size() || s[pos++] != 'T') return false;
  return time_part(s, pos) && zone_part(s, pos);
}

bool check_time(std::string_view s) noexcept {
  std::size_t pos = 0;
  return time_part(s, pos) && pos == s.size();
}

bool check_id(std::string_view s) noexcept {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    bool ok = is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

// [^\s]+(\s[^\s]+)*
bool check_code(std::string_view s) noexcept {
  if (s.empty() || is_space(s.front()) || is_space(s.back())) return false;
  for (std::size_t i = 1; i < s.size(); ++i)
    if (is_space(s[i]) && is_space(s[i - 1])) return false;
  return true;
}

// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
bool check_decimal(std::string_view s) noexcept {
  std::size_t pos = 0;
  if (pos < s.size() && s[pos] == '-') ++pos;
  if (pos == s.size() || !is_digit(s[pos])) return false;
  if (s[pos] == '0') {
    ++pos;
  } else {
    while (pos < s.size() && is_digit(s[pos])) ++pos;
  }
  if (pos < s.size() && s[pos] == '.') {
    std::size_t start = ++pos;
    while (pos < s.size() && is_digit(s[pos])) ++pos;
    if (pos == start) return false;
  }
  if (pos < s.size() && (s[pos] == 'e' || s[pos] == 'E')) {
    ++pos;
    if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) ++pos;
    std::size_t start = pos;
    while (pos < s.size() && is_digit(s[pos])) ++pos;
    if (pos == start) return false;
  }
  return pos == s.size();
}

// Integer literal without leading zeros in [min, 2^31-1].
bool check_integer(std::string_view s, std::int64_t min) noexcept {
  std::size_t pos = 0;
  bool negative = false;
  if (pos < s.size() && s[pos] == '-') {
    negative = true;
    ++pos;
  }
  if (pos == s.size()) return false;
  if (s[pos] == '0' && pos + 1 != s.size()) return false;
  if (s.size() - pos > 10) return false;
  std::int64_t v = 0;
  for (; pos < s.size(); ++pos) {
    if (!is_digit(s[pos])) return false;
    v = v * 10 + (s[pos] - '0');
  }
  if (negative) {
    if (min >= 0) return false;  // unsignedInt and positiveInt have no sign
    v = -v;
  }
  return v >= min && v <= 2147483647;
}

// Any non-whitespace characters (\S*); an empty value is rejected elsewhere.
bool check_uri(std::string_view s) noexcept {
  for (char c : s)
    if (is_space(c) || static_cast<unsigned char>(c) < 0x20) return false;
  return true;
}

// urn:oid:[0-2](\.(0|[1-9][0-9]*))+
bool check_oid(std::string_view s) noexcept {
  constexpr std::string_view prefix = "urn:oid:";
  if (!s.starts_with(prefix)) return false;
  std::size_t pos = prefix.size();
  if (pos == s.size() || s[pos] < '0' || s[pos] > '2') return false;
  ++pos;
  int arcs = 0;
  while (pos < s.size()) {
    if (s[pos++] != '.') return false;
    if (pos == s.size() || !is_digit(s[pos])) return false;
    if (s[pos] == '0') {
      ++pos;
    } else {
      while (pos < s.size() && is_digit(s[pos])) ++pos;
    }
    ++arcs;
  }
  return arcs > 0;
}

// urn:uuid:8-4-4-4-12 lowercase hex
bool check_uuid(std::string_view s) noexcept {
  constexpr std::string_view prefix = "urn:uuid:";
  if (!s.starts_with(prefix) || s.size() != prefix.size() + 36) return false;
  for (std::size_t i = 0; i < 36; ++i) {
    char c = s[prefix.size() + i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!is_digit(c) && !(c >= 'a' && c <= 'f')) {
      return false;
    }
  }
  return true;
}

// (\s*([0-9a-zA-Z\+/=]){4}\s*)+
bool check_base64(std::string_view s) noexcept {
  std::size_t count = 0;
  for (char c : s) {
    if (is_space(c)) continue;
    bool ok = is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '+' || c == '/' || c == '=';
    if (!ok) return false;
    ++count;
  }
  return count > 0 && count % 4 == 0;
}

// [ \r\n\t\S]+ : no control characters other than tab, CR and LF; at most 1 MB. Narratives make
// this the hottest check, so whole 8-byte words without any byte below 0x20 are skipped at once.
bool check_string(std::string_view s, std::size_t max_bytes = max_string_bytes) noexcept {
  if (s.empty() || s.size() > max_bytes) return false;
  constexpr std::uint64_t ones = 0x0101010101010101ULL;
  constexpr std::uint64_t highs = 0x8080808080808080ULL;
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t word;
    std::memcpy(&word, s.data() + i, 8);
    // Non-zero when some byte is below 0x20 (bytes >= 0x80 are masked out by ~word).
    if (((word - ones * 0x20) & ~word & highs) == 0) continue;
    for (std::size_t j = i; j < i + 8; ++j) {
      auto u = static_cast<unsigned char>(s[j]);
      if (u < 0x20 && u != '\t' && u != '\r' && u != '\n') return false;
    }
  }
  for (; i < s.size(); ++i) {
    auto u = static_cast<unsigned char>(s[i]);
    if (u < 0x20 && u != '\t' && u != '\r' && u != '\n') return false;
  }
  return true;
}

}  // namespace

bool is_valid_primitive(std::string_view type, std::string_view text) {
  if (type == "string" || type == "markdown") return check_string(text);
  // Narratives of large terminologies exceed 1 MB in the official examples; no limit for xhtml.
  if (type == "xhtml") return check_string(text, std::string_view::npos);
  if (type == "code") return check_code(text) && text.size() <= max_string_bytes;
  if (type == "id") return check_id(text);
  if (type == "dateTime") return check_date_time(text);
  if (type == "date") return check_date(text);
  if (type == "instant") return check_instant(text);
  if (type == "time") return check_time(text);
  if (type == "decimal") return check_decimal(text);
  if (type == "integer") return check_integer(text, -2147483648LL);
  if (type == "positiveInt") return check_integer(text, 1);
  if (type == "unsignedInt") return check_integer(text, 0);
  if (type == "boolean") return text == "true" || text == "false";
  if (type == "uri" || type == "url" || type == "canonical") return !text.empty() && check_uri(text);
  if (type == "oid") return check_oid(text);
  if (type == "uuid") return check_uuid(text);
  if (type == "base64Binary") return check_base64(text);
  return check_string(text);
}

}  // namespace yilian::fhir
