#include "yilian/mappers/hl7_time.hpp"

#include <doctest/doctest.h>

using yilian::mappers::hl7_to_fhir_date;
using yilian::mappers::hl7_to_fhir_datetime;

TEST_CASE("HL7 timestamps keep their precision") {
  CHECK(hl7_to_fhir_datetime("2026") == "2026");
  CHECK(hl7_to_fhir_datetime("202603") == "2026-03");
  CHECK(hl7_to_fhir_datetime("20260303") == "2026-03-03");
  CHECK(hl7_to_fhir_datetime("202603031020") == "2026-03-03T10:20:00+08:00");
  CHECK(hl7_to_fhir_datetime("20260303102000") == "2026-03-03T10:20:00+08:00");
  CHECK(hl7_to_fhir_datetime("20260303102000.123") == "2026-03-03T10:20:00.123+08:00");
  CHECK(hl7_to_fhir_datetime("20260303102000+0000") == "2026-03-03T10:20:00+00:00");
  CHECK(hl7_to_fhir_datetime("20260303102000", "Z") == "2026-03-03T10:20:00Z");
  CHECK(hl7_to_fhir_date("20260303102000+0800") == "2026-03-03");
}

TEST_CASE("malformed HL7 timestamps are refused, not guessed") {
  CHECK_FALSE(hl7_to_fhir_datetime(""));
  CHECK_FALSE(hl7_to_fhir_datetime("2026133"));
  CHECK_FALSE(hl7_to_fhir_datetime("20261303"));
  CHECK_FALSE(hl7_to_fhir_datetime("20260303T1020"));
  CHECK_FALSE(hl7_to_fhir_datetime("20260303102000+08"));
  CHECK_FALSE(hl7_to_fhir_datetime("20260303256000"));
}
