// HL7 timestamps (v2 TS/DTM and CDA TS: YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]) to FHIR date and
// dateTime, keeping the precision that was sent. Chinese HIS and EMR systems usually send local
// time without an offset: `default_offset` (China Standard Time unless configured) is applied to
// values that carry a time but no offset.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace yilian::mappers {

// FHIR dateTime ("2026-03-03T10:20:00+08:00", "2026-03", "2026-03-03"); nullopt when malformed.
std::optional<std::string> hl7_to_fhir_datetime(std::string_view ts, std::string_view default_offset = "+08:00");

// FHIR date (the date part only, whatever precision beyond days was sent).
std::optional<std::string> hl7_to_fhir_date(std::string_view ts);

}  // namespace yilian::mappers
