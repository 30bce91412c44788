#include "yilian/profiles/alliance.hpp"

#include <array>

namespace yilian::profiles {
namespace {

bool is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int days_in_month(int y, int m) {
  static constexpr std::array<int, 12> days{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : days[static_cast<std::size_t>(m - 1)];
}

int digits(std::string_view s, std::size_t pos, std::size_t len) {
  int v = 0;
  for (std::size_t i = pos; i < pos + len; ++i) v = v * 10 + (s[i] - '0');
  return v;
}

}  // namespace

char national_id_check_digit(std::string_view first17) noexcept {
  static constexpr std::array<int, 17> weights{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2};
  static constexpr std::array<char, 11> result{'1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'};
  int sum = 0;
  for (std::size_t i = 0; i < 17 && i < first17.size(); ++i) sum += (first17[i] - '0') * weights[i];
  return result[static_cast<std::size_t>(sum % 11)];
}

std::optional<national_id_info> parse_national_id(std::string_view id) noexcept {
  if (id.size() != 18) return std::nullopt;
  for (std::size_t i = 0; i < 17; ++i)
    if (id[i] < '0' || id[i] > '9') return std::nullopt;
  char last = id[17] == 'x' ? 'X' : id[17];
  if (last != national_id_check_digit(id.substr(0, 17))) return std::nullopt;
  int year = digits(id, 6, 4), month = digits(id, 10, 2), day = digits(id, 12, 2);
  if (year < 1850 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month)) return std::nullopt;
  national_id_info info;
  info.region = std::string(id.substr(0, 6));
  info.birth_date = std::string(id.substr(6, 4)) + "-" + std::string(id.substr(10, 2)) + "-" + std::string(id.substr(12, 2));
  info.male = (id[16] - '0') % 2 == 1;
  return info;
}

void check_alliance_rules(const fhir::value& resource, fhir::issue_list& issues) {
  const fhir::value* type = resource.find("resourceType");
  const fhir::value* identifiers = resource.find("identifier");
  if (!type || !identifiers || !identifiers->is_array()) return;
  std::size_t index = 0;
  for (const auto& identifier : identifiers->items()) {
    const fhir::value* system = identifier.find("system");
    const fhir::value* value = identifier.find("value");
    if (system && value && system->text() == identifier_system::national_id && !parse_national_id(value->text())) {
      issues.error(fhir::issue_type::business_rule,
                   "'" + value->text() +
                       "' is not a valid resident identity number (GB 11643: 17 digits, a real birth date and the "
                       "ISO 7064 MOD 11-2 check character)",
                   type->text() + ".identifier[" + std::to_string(index) + "].value");
    }
    ++index;
  }
}

}  // namespace yilian::profiles
