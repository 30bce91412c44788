#include "yilian/profiles/alliance.hpp"

#include <doctest/doctest.h>

#include "yilian/fhir/value.hpp"

using namespace yilian;

TEST_CASE("national id: check digit per ISO 7064 MOD 11-2") {
  // The project's synthetic test identities (shared/corpus/cda-wst500/README.md).
  CHECK(profiles::national_id_check_digit("50010319520730451") == '8');
  CHECK(profiles::national_id_check_digit("37152619781104202") == '6');
  // GB 11643 worked example: 11010519491231002X.
  CHECK(profiles::national_id_check_digit("11010519491231002") == 'X');
}

TEST_CASE("national id: parse") {
  auto info = profiles::parse_national_id("500103195207304518");
  REQUIRE(info);
  CHECK(info->region == "500103");
  CHECK(info->birth_date == "1952-07-30");
  CHECK(info->male);
  auto woman = profiles::parse_national_id("371526197811042026");
  REQUIRE(woman);
  CHECK_FALSE(woman->male);
  CHECK(profiles::parse_national_id("11010519491231002x"));  // lower-case x accepted
  CHECK_FALSE(profiles::parse_national_id("500103195207304519"));  // wrong check digit
  CHECK_FALSE(profiles::parse_national_id("50010319520730451"));   // too short
  CHECK_FALSE(profiles::parse_national_id("5001031952073045A8"));  // not digits
  // A well-formed number with an impossible date (Feb 30) and its own correct check digit.
  std::string feb30 = "11010519490230001";
  feb30.push_back(profiles::national_id_check_digit(feb30));
  CHECK_FALSE(profiles::parse_national_id(feb30));
}

TEST_CASE("alliance rules flag a bad 身份证号 with its element path") {
  using fhir::value;
  value patient = value::make_object();
  patient.set("resourceType", value::make_string("Patient"));
  value ids = value::make_array();
  value good = value::make_object();
  good.set("system", value::make_string(std::string(profiles::identifier_system::national_id)));
  good.set("value", value::make_string("500103195207304518"));
  ids.push_back(good);
  value bad = good;
  bad.set("value", value::make_string("500103195207304519"));
  ids.push_back(bad);
  patient.set("identifier", ids);
  fhir::issue_list issues;
  profiles::check_alliance_rules(patient, issues);
  REQUIRE(issues.size() == 1);
  CHECK(issues.all()[0].location == "Patient.identifier[1].value");
  CHECK(issues.all()[0].type == fhir::issue_type::business_rule);
}
