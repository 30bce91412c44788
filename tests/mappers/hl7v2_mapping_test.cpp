#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/mappers/hl7v2_fhir.hpp"
#include "yilian/profiles/alliance.hpp"

using namespace yilian;
namespace v2 = yilian::mappers::hl7v2;
namespace fs = std::filesystem;

namespace {

const fs::path data_dir = fs::path(YILIAN_SOURCE_DIR) / "tests/data/hl7v2";
const fs::path corpus_dir = fs::path(YILIAN_SHARED_DIR) / "corpus/hl7v2-msft";

v2::message parse_file(const fs::path& path) {
  auto parsed = v2::parse(test::read_file(path));
  REQUIRE_MESSAGE(parsed.parsed, path.string());
  return *parsed.parsed;
}

v2::mapping_options alliance_options() {
  v2::mapping_options options;
  // The lead hospital's HIS: its MRNs and visit numbers; practitioners stay sender-local.
  options.authority_systems = {{"ZJRMYY^MR", "https://his.zjrmyy.example/fhir/sid/mrn"},
                               {"ZJRMYY^VN", "https://his.zjrmyy.example/fhir/sid/visit-number"}};
  return options;
}

// Every entry's resource passes the R4 validator and the alliance rules; so does the Bundle.
void check_valid(const v2::mapping_result& result, const std::string& name) {
  fhir::issue_list bundle_issues;
  fhir::validate_resource(result.bundle, bundle_issues);
  CHECK_MESSAGE(!bundle_issues.has_errors(), name, ": ", fhir::to_json(fhir::to_operation_outcome(bundle_issues)));
  for (const auto& entry : result.bundle.find("entry")->items()) {
    fhir::issue_list issues;
    fhir::validate_resource(*entry.find("resource"), issues);
    profiles::check_alliance_rules(*entry.find("resource"), issues);
    CHECK_MESSAGE(!issues.has_errors(), name, " ", entry.find("request")->find("url")->text(), ": ",
                  fhir::to_json(fhir::to_operation_outcome(issues)));
  }
}

std::vector<const fhir::value*> resources_of(const fhir::value& bundle, std::string_view type) {
  std::vector<const fhir::value*> out;
  for (const auto& entry : bundle.find("entry")->items())
    if (entry.find("resource")->find("resourceType")->text() == type) out.push_back(entry.find("resource"));
  return out;
}

std::string problems_text(const v2::mapping_result& result) {
  std::string text;
  for (const auto& p : result.problems)
    text += (p.is_warning ? "W " : "E ") + p.where.text() + " " + std::to_string(static_cast<int>(p.code)) + " " +
            p.message + "\n";
  return text;
}

}  // namespace

TEST_CASE("HL7 v2 golden files: mapped Bundles match tests/data/hl7v2/golden (YILIAN_UPDATE_GOLDEN=1 rewrites)") {
  struct golden_case {
    fs::path input;
    std::string name;
  };
  const std::vector<golden_case> cases = {
      {data_dir / "cn-lis-oru-r01.hl7", "cn-lis-oru-r01"}, {data_dir / "cn-adt-a01.hl7", "cn-adt-a01"},
      {corpus_dir / "ORU-R01-01.hl7", "ORU-R01-01"},       {corpus_dir / "LAB-ORU-1.hl7", "LAB-ORU-1"},
      {corpus_dir / "LAB-ORU-2.hl7", "LAB-ORU-2"},         {corpus_dir / "ADT-A01-01.hl7", "ADT-A01-01"},
      {corpus_dir / "ADT-A03-01.hl7", "ADT-A03-01"},       {corpus_dir / "ADT-A08-01.hl7", "ADT-A08-01"},
      {corpus_dir / "ADT-A40-01.hl7", "ADT-A40-01"},       {corpus_dir / "LAB-ORM-1.hl7", "LAB-ORM-1"},
      {corpus_dir / "OML-O21-01.hl7", "OML-O21-01"},       {corpus_dir / "SIU-S12-01.hl7", "SIU-S12-01"},
      {corpus_dir / "MDM-T02-02.hl7", "MDM-T02-02"},
  };
  const bool update = std::getenv("YILIAN_UPDATE_GOLDEN") && std::string(std::getenv("YILIAN_UPDATE_GOLDEN")) == "1";
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto result = v2::map_to_fhir(parse_file(c.input), alliance_options());
    CHECK(result.supported);
    CHECK_MESSAGE(!result.has_errors(), problems_text(result));
    check_valid(result, c.name);
    fs::path golden = data_dir / "golden" / (c.name + ".json");
    std::string actual = fhir::to_json(result.bundle, {.pretty = true}) + "\n";
    if (update) {
      std::ofstream(golden, std::ios::binary) << actual;
      continue;
    }
    REQUIRE_MESSAGE(fs::exists(golden), golden.string(), " missing: run with YILIAN_UPDATE_GOLDEN=1");
    CHECK_MESSAGE(test::same_json(test::parse_json_or_fail(test::read_file(golden)), result.bundle), c.name,
                  " differs from its golden file; actual:\n", actual);
  }
}

TEST_CASE("every supported corpus message maps to a valid transaction Bundle") {
  int mapped = 0;
  for (const auto& file : fs::directory_iterator(corpus_dir)) {
    if (file.path().extension() != ".hl7") continue;
    auto parsed = v2::parse(test::read_file(file.path()));
    if (!parsed.parsed) continue;
    auto result = v2::map_to_fhir(*parsed.parsed, alliance_options());
    CAPTURE(file.path().filename().string());
    CHECK(result.bundle.find("type")->text() == "transaction");
    if (!result.supported) {
      REQUIRE(!result.problems.empty());
      auto code = result.problems.front().code;
      CHECK((code == v2::error_code::unsupported_message_type || code == v2::error_code::unsupported_event));
      CHECK(result.bundle.find("entry")->items().empty());
      continue;
    }
    ++mapped;
    check_valid(result, file.path().filename().string());
    for (const auto& p : result.problems)
      CHECK_MESSAGE(p.code != v2::error_code::application_internal_error, problems_text(result));
  }
  CHECK(mapped >= 25);
}

TEST_CASE("Chinese LIS ORU^R01: 身份证号, UCUM units, ranges, flags, performing lab") {
  auto result = v2::map_to_fhir(parse_file(data_dir / "cn-lis-oru-r01.hl7"), alliance_options());
  REQUIRE(result.supported);
  CHECK_MESSAGE(!result.has_errors(), problems_text(result));
  const fhir::value& bundle = result.bundle;

  auto patients = resources_of(bundle, "Patient");
  REQUIRE(patients.size() == 1);
  // The conditional update keys the patient on the national id, the alliance-wide identity.
  const fhir::value& first = bundle.find("entry")->items().front();
  CHECK(first.find("request")->find("method")->text() == "PUT");
  CHECK(first.find("request")->find("url")->text() ==
        "Patient?identifier=urn:oid:2.16.156.10011.1.3%7C500103195207304518");
  const auto& ids = patients[0]->find("identifier")->items();
  REQUIRE(ids.size() == 2);
  CHECK(ids[0].find("system")->text() == "https://his.zjrmyy.example/fhir/sid/mrn");
  CHECK(ids[1].find("system")->text() == profiles::identifier_system::national_id);
  CHECK(patients[0]->find("name")->items()[0].find("text")->text() == "陈国华");
  CHECK(patients[0]->find("gender")->text() == "male");
  CHECK(patients[0]->find("birthDate")->text() == "1952-07-30");

  auto reports = resources_of(bundle, "DiagnosticReport");
  REQUIRE(reports.size() == 2);
  CHECK(reports[0]->find("status")->text() == "final");
  CHECK(reports[0]->find("effectiveDateTime")->text() == "2026-03-03T07:30:00+08:00");
  CHECK(reports[0]->find("issued")->text() == "2026-03-03T10:15:00+08:00");
  CHECK(reports[0]->find("result")->items().size() == 5);
  CHECK(reports[0]->find("resultsInterpreter"));
  CHECK(reports[0]->find("specimen"));

  auto observations = resources_of(bundle, "Observation");
  REQUIRE(observations.size() == 9);
  const fhir::value& wbc = *observations[0];
  // A local code with a LOINC alternate keeps both codings.
  CHECK(wbc.find("code")->find("coding")->items().size() == 2);
  CHECK(wbc.find("code")->find("coding")->items()[1].find("system")->text() == "http://loinc.org");
  CHECK(wbc.find("valueQuantity")->find("value")->text() == "11.2");
  CHECK(wbc.find("valueQuantity")->find("unit")->text() == "10*9/L");
  CHECK(observations[1]->find("valueQuantity")->find("code")->text() == "10*12/L");
  CHECK(wbc.find("valueQuantity")->find("code")->text() == "10*9/L");
  CHECK(wbc.find("interpretation")->items()[0].find("coding")->items()[0].find("code")->text() == "H");
  CHECK(wbc.find("referenceRange")->items()[0].find("low")->find("value")->text() == "3.5");
  CHECK(wbc.find("referenceRange")->items()[0].find("high")->find("value")->text() == "9.5");
  // The fullwidth range separator and the arrow flag Chinese LIS print.
  const fhir::value& neut = *observations[3];
  CHECK(neut.find("referenceRange")->items()[0].find("high")->find("value")->text() == "75");
  CHECK(neut.find("interpretation")->items()[0].find("coding")->items()[0].find("code")->text() == "H");
  const fhir::value& crp = *observations[4];
  CHECK(crp.find("valueQuantity")->find("comparator")->text() == "<");
  CHECK(crp.find("referenceRange")->items()[0].find("high")->find("value")->text() == "10");
  CHECK(!crp.find("referenceRange")->items()[0].find("low"));
  CHECK(crp.find("note")->items()[0].find("text")->text() == "低于检测下限");
  CHECK(observations[8]->find("valueString")->text() == "阴性");

  // The lab is one Organization with its identifier, performer of every result and report.
  auto organizations = resources_of(bundle, "Organization");
  REQUIRE(organizations.size() == 1);
  CHECK(organizations[0]->find("identifier")->items()[0].find("system")->text() ==
        profiles::identifier_system::organization);
  CHECK(organizations[0]->find("identifier")->items()[0].find("value")->text() == "47011661-4");
  CHECK(organizations[0]->find("name")->text() == "浙江省人民医院检验科");

  // Observation identity: filler number + test code.
  bool found = false;
  for (const auto& entry : bundle.find("entry")->items())
    if (entry.find("request")->find("url")->text() ==
        "Observation?identifier=urn:yilian:local:LIS:filler-order%7CLAB20260303002/K")
      found = true;
  CHECK(found);

  // Local codes without a standard equivalent are kept and reported as warnings.
  bool warned = false;
  for (const auto& p : result.problems)
    if (p.is_warning && p.code == v2::error_code::table_value_not_found && p.where.text() == "OBX[2]-3") warned = true;
  CHECK_MESSAGE(warned, problems_text(result));
}

TEST_CASE("the code translator adds the standard coding next to the local one") {
  auto options = alliance_options();
  std::vector<std::string> asked;
  options.translate = [&](const v2::local_code& code) -> std::optional<v2::coding> {
    asked.push_back(code.sending_facility + "|" + code.v2_system + "|" + code.code);
    if (code.code == "HGB") return v2::coding{"http://loinc.org", "718-7", "Hemoglobin [Mass/volume] in Blood"};
    return std::nullopt;
  };
  auto result = v2::map_to_fhir(parse_file(data_dir / "cn-lis-oru-r01.hl7"), options);
  auto observations = resources_of(result.bundle, "Observation");
  REQUIRE(observations.size() == 9);
  const auto& codings = observations[2]->find("code")->find("coding")->items();
  REQUIRE(codings.size() == 2);
  CHECK(codings[0].find("code")->text() == "HGB");
  CHECK(codings[1].find("code")->text() == "718-7");
  CHECK(std::find(asked.begin(), asked.end(), "ZJRMYY-JYK|99LIS|HGB") != asked.end());
  for (const auto& p : result.problems) CHECK(p.where.text() != "OBX[3]-3");
}

TEST_CASE("the same message always gives the same Bundle; GB 18030 gives the same resources") {
  auto message = parse_file(data_dir / "cn-lis-oru-r01.hl7");
  auto a = v2::map_to_fhir(message, alliance_options());
  auto b = v2::map_to_fhir(message, alliance_options());
  CHECK(a.bundle == b.bundle);
  // Distinct, well-formed urn:uuid fullUrls.
  std::set<std::string> urls;
  for (const auto& entry : a.bundle.find("entry")->items()) {
    std::string url = entry.find("fullUrl")->text();
    CHECK(fhir::is_valid_primitive("uuid", url));
    urls.insert(url);
  }
  CHECK(urls.size() == a.bundle.find("entry")->items().size());

  auto gbk = v2::map_to_fhir(parse_file(data_dir / "cn-lis-oru-r01-gb18030.hl7"), alliance_options());
  CHECK_MESSAGE(!gbk.has_errors(), problems_text(gbk));
  const auto& x = a.bundle.find("entry")->items();
  const auto& y = gbk.bundle.find("entry")->items();
  REQUIRE(x.size() == y.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    CHECK(x[i].find("request")->find("url")->text() == y[i].find("request")->find("url")->text());
    if (x[i].find("resource")->find("resourceType")->text() == "Patient")
      CHECK(*x[i].find("resource") == *y[i].find("resource"));
  }
}

TEST_CASE("ADT: Encounter status from the event, visit number identity, A40 links both patients") {
  auto a01 = v2::map_to_fhir(parse_file(data_dir / "cn-adt-a01.hl7"), alliance_options());
  CHECK_MESSAGE(!a01.has_errors(), problems_text(a01));
  auto encounters = resources_of(a01.bundle, "Encounter");
  REQUIRE(encounters.size() == 1);
  CHECK(encounters[0]->find("status")->text() == "in-progress");
  CHECK(encounters[0]->find("class")->find("code")->text() == "IMP");
  CHECK(encounters[0]->find("location")->items().size() == 3);
  CHECK(resources_of(a01.bundle, "RelatedPerson").size() == 1);
  CHECK(resources_of(a01.bundle, "Coverage").size() == 1);

  auto a03 = v2::map_to_fhir(parse_file(corpus_dir / "ADT-A03-01.hl7"), alliance_options());
  REQUIRE(resources_of(a03.bundle, "Encounter").size() == 1);
  CHECK(resources_of(a03.bundle, "Encounter")[0]->find("status")->text() == "finished");

  auto a40 = v2::map_to_fhir(parse_file(corpus_dir / "ADT-A40-01.hl7"), alliance_options());
  CHECK_MESSAGE(!a40.has_errors(), problems_text(a40));
  const auto& entries = a40.bundle.find("entry")->items();
  REQUIRE(entries.size() == 2);
  const fhir::value& survivor = *entries[0].find("resource");
  const fhir::value& merged = *entries[1].find("resource");
  CHECK(survivor.find("link")->items()[0].find("type")->text() == "replaces");
  CHECK(survivor.find("link")->items()[0].find("other")->find("reference")->text() ==
        entries[1].find("fullUrl")->text());
  CHECK(merged.find("link")->items()[0].find("type")->text() == "replaced-by");
  CHECK(merged.find("active")->text() == "false");
  CHECK(entries[1].find("request")->find("url")->text().ends_with("%7C56789"));
}

TEST_CASE("ORM^O01: a ServiceRequest keyed on the placer order number, requester and status from ORC") {
  auto result = v2::map_to_fhir(parse_file(corpus_dir / "LAB-ORM-1.hl7"), alliance_options());
  CHECK_MESSAGE(!result.has_errors(), problems_text(result));
  auto requests = resources_of(result.bundle, "ServiceRequest");
  REQUIRE(requests.size() == 1);
  CHECK(requests[0]->find("status")->text() == "active");
  CHECK(requests[0]->find("intent")->text() == "order");
  CHECK(requests[0]->find("code")->find("coding")->items()[0].find("code")->text() == "24317-0");
  // ORC-12 is empty (MINNIE MOUSE is ORC-10, entered by): OBR-16 orders.
  CHECK(requests[0]->find("requester")->find("display")->text() == "URO");
  CHECK(requests[0]->find("identifier")->items().size() == 2);
  bool keyed = false;
  for (const auto& entry : result.bundle.find("entry")->items())
    if (entry.find("request")->find("url")->text().starts_with("ServiceRequest?identifier=") &&
        entry.find("request")->find("url")->text().ends_with("%7C88502218"))
      keyed = true;
  CHECK(keyed);
}

TEST_CASE("SIU^S12/S15 -> Appointment keyed on the filler appointment id; MDM^T02 -> DocumentReference") {
  auto booked = v2::map_to_fhir(parse_file(corpus_dir / "SIU-S12-01.hl7"), alliance_options());
  CHECK_MESSAGE(!booked.has_errors(), problems_text(booked));
  auto appointments = resources_of(booked.bundle, "Appointment");
  REQUIRE(appointments.size() == 1);
  CHECK(appointments[0]->find("status")->text() == "booked");
  CHECK(appointments[0]->find("start")->text() == "2021-09-24T09:30:00+02:15");
  CHECK(appointments[0]->find("participant")->items().size() == 3);  // patient, AIP, AIL

  auto cancelled = v2::map_to_fhir(parse_file(corpus_dir / "SIU-S15-01.hl7"), alliance_options());
  auto cancelled_appointments = resources_of(cancelled.bundle, "Appointment");
  REQUIRE(cancelled_appointments.size() == 1);
  CHECK(cancelled_appointments[0]->find("status")->text() == "cancelled");

  auto document = v2::map_to_fhir(parse_file(corpus_dir / "MDM-T02-02.hl7"), alliance_options());
  CHECK_MESSAGE(!document.has_errors(), problems_text(document));
  auto documents = resources_of(document.bundle, "DocumentReference");
  REQUIRE(documents.size() == 1);
  CHECK(documents[0]->find("masterIdentifier")->find("value")->text() == "1.2.840.317.5947431.51.20080131160038");
  CHECK(documents[0]->find("docStatus")->text() == "final");
  const auto& attachment = *documents[0]->find("content")->items()[0].find("attachment");
  CHECK(attachment.find("contentType")->text() == "text/plain; charset=utf-8");
  CHECK(!attachment.find("data")->text().empty());
}

TEST_CASE("unsupported messages are refused with table 0357 codes; bad values are errors with locations") {
  auto parse_text = [](std::string text) {
    auto parsed = v2::parse(text);
    REQUIRE(parsed.parsed);
    return *parsed.parsed;
  };
  auto unknown_type = v2::map_to_fhir(parse_text("MSH|^~\\&|A|B|C|D|20260101||QRY^Q01|1|P|2.4\rPID|1||1^^^X^MR\r"));
  CHECK(!unknown_type.supported);
  REQUIRE(unknown_type.problems.size() == 1);
  CHECK(unknown_type.problems[0].code == v2::error_code::unsupported_message_type);
  CHECK(unknown_type.problems[0].where.text() == "MSH-9.1");

  auto unknown_event = v2::map_to_fhir(parse_text("MSH|^~\\&|A|B|C|D|20260101||ADT^A45|1|P|2.4\rPID|1||1^^^X^MR\r"));
  CHECK(!unknown_event.supported);
  CHECK(unknown_event.problems[0].code == v2::error_code::unsupported_event);

  auto bad_number = v2::map_to_fhir(
      parse_text("MSH|^~\\&|LIS|H|C|D|20260101||ORU^R01|9|P|2.4\rPID|1||1^^^X^MR\rOBR|1||F1|K^钾^99LIS|||20260101\r"
                 "OBX|1|NM|K^钾^99LIS||abc|mmol/L||||F\r"));
  CHECK(bad_number.supported);
  CHECK(bad_number.has_errors());
  bool located = false;
  for (const auto& p : bad_number.problems)
    if (!p.is_warning && p.code == v2::error_code::data_type && p.where.text() == "OBX-5") located = true;
  CHECK_MESSAGE(located, problems_text(bad_number));

  auto bad_national_id = v2::map_to_fhir(parse_text("MSH|^~\\&|A|B|C|D|20260101||ADT^A28|2|P|2.4\r"
                                                    "PID|1||500103195207304519^^^SFZ^NNCHN||张^三\r"),
                                         [] {
                                           v2::mapping_options o;
                                           o.authority_systems = {{"SFZ", "urn:oid:2.16.156.10011.1.3"}};
                                           return o;
                                         }());
  CHECK(bad_national_id.has_errors());
  CHECK(bad_national_id.problems.front().where.text() == "PID-3");
}
