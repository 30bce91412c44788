// The alliance profile: identifier systems of the Chinese health information standards and the
// rules Yilian enforces on top of base FHIR R4 when a resource is written.
//
// OIDs: WS/T 500 identifier roots under 2.16.156.10011.1 (.3 居民身份证号, .5 机构, .11 门(急)诊号,
// .12 住院号, .19 居民健康卡号), written as urn:oid: URIs in Identifier.system.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "yilian/fhir/issues.hpp"
#include "yilian/fhir/value.hpp"

namespace yilian::profiles {

namespace identifier_system {
inline constexpr std::string_view national_id = "urn:oid:2.16.156.10011.1.3";        // 居民身份证号
inline constexpr std::string_view organization = "urn:oid:2.16.156.10011.1.5";       // 医疗机构
inline constexpr std::string_view outpatient_number = "urn:oid:2.16.156.10011.1.11"; // 门(急)诊号
inline constexpr std::string_view inpatient_number = "urn:oid:2.16.156.10011.1.12";  // 住院号
inline constexpr std::string_view health_card = "urn:oid:2.16.156.10011.1.19";       // 居民健康卡号
}  // namespace identifier_system

// What an 18-character resident identity number (GB 11643-1999) encodes.
struct national_id_info {
  std::string region;      // 6-digit administrative division code
  std::string birth_date;  // FHIR date, YYYY-MM-DD
  bool male = false;       // sequence code parity: odd = male
};

// Check digit by ISO 7064 MOD 11-2 over the first 17 digits ('X' stands for 10).
char national_id_check_digit(std::string_view first17) noexcept;

// Validates length, digits, the birth date (a real calendar date) and the check digit.
std::optional<national_id_info> parse_national_id(std::string_view id) noexcept;

// Alliance rules beyond the base specification, reported as `business-rule` errors with the
// element path (e.g. a 身份证号 with a wrong check digit in Patient.identifier[0].value).
void check_alliance_rules(const fhir::value& resource, fhir::issue_list& issues);

}  // namespace yilian::profiles
