#include "yilian/mappers/hl7_time.hpp"

#include <cctype>

namespace yilian::mappers {
namespace {

bool all_digits(std::string_view s) {
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

int number(std::string_view s) {
  int v = 0;
  for (char c : s) v = v * 10 + (c - '0');
  return v;
}

bool plausible(std::string_view d) {
  if (d.size() >= 6 && (number(d.substr(4, 2)) < 1 || number(d.substr(4, 2)) > 12)) return false;
  if (d.size() >= 8 && (number(d.substr(6, 2)) < 1 || number(d.substr(6, 2)) > 31)) return false;
  if (d.size() >= 10 && number(d.substr(8, 2)) > 23) return false;
  if (d.size() >= 12 && number(d.substr(10, 2)) > 59) return false;
  if (d.size() >= 14 && number(d.substr(12, 2)) > 60) return false;
  return true;
}

}  // namespace

std::optional<std::string> hl7_to_fhir_datetime(std::string_view ts, std::string_view default_offset) {
  std::string_view offset;
  if (auto z = ts.find_first_of("+-"); z != std::string_view::npos) {
    offset = ts.substr(z);
    ts = ts.substr(0, z);
    if (offset.size() != 5 || !all_digits(offset.substr(1))) return std::nullopt;
  }
  std::string_view fraction;
  if (auto dot = ts.find('.'); dot != std::string_view::npos) {
    fraction = ts.substr(dot + 1);
    ts = ts.substr(0, dot);
    if (fraction.empty() || !all_digits(fraction) || ts.size() != 14) return std::nullopt;
  }
  std::size_t n = ts.size();
  if (!all_digits(ts) || (n != 4 && n != 6 && n != 8 && n != 10 && n != 12 && n != 14) || !plausible(ts))
    return std::nullopt;
  std::string out(ts.substr(0, 4));
  if (n >= 6) out += "-" + std::string(ts.substr(4, 2));
  if (n >= 8) out += "-" + std::string(ts.substr(6, 2));
  if (n <= 8) return out;  // date precision: no time, no offset
  out += "T" + std::string(ts.substr(8, 2));
  out += ":" + (n >= 12 ? std::string(ts.substr(10, 2)) : std::string("00"));
  out += ":" + (n >= 14 ? std::string(ts.substr(12, 2)) : std::string("00"));
  if (!fraction.empty()) out += "." + std::string(fraction);
  if (!offset.empty())
    out += std::string(offset.substr(0, 3)) + ":" + std::string(offset.substr(3, 2));
  else
    out += default_offset;
  return out;
}

std::optional<std::string> hl7_to_fhir_date(std::string_view ts) {
  auto end = ts.find_first_of("+-.");
  std::string_view digits = ts.substr(0, end);
  if (digits.size() > 8) digits = digits.substr(0, 8);
  if (digits.size() != 4 && digits.size() != 6 && digits.size() != 8) return std::nullopt;
  return hl7_to_fhir_datetime(digits);
}

}  // namespace yilian::mappers
