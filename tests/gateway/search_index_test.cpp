// Write-time search indexing: the rows extracted from official examples for each parameter type,
// normalisation and date ranges, and the rows a write leaves in PostgreSQL.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <pqxx/pqxx>

#include "../../gateway/src/search_index.hpp"
#include "test_database.hpp"
#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using gateway::detail::extract_index_rows;
using gateway::detail::fhir_date_range;
using gateway::detail::index_rows;
using gateway::detail::normalise_string;

namespace {

fhir::value example(const std::string& name) {
  return test::parse_json_or_fail(test::read_file(std::filesystem::path(YILIAN_FHIR_PACKAGE_DIR) / name));
}

index_rows rows_of(const std::string& name) {
  return extract_index_rows(fhir::definitions::r4(), example(name));
}

template <typename Rows, typename Pred>
bool has(const Rows& rows, Pred pred) {
  return std::any_of(rows.begin(), rows.end(), pred);
}

}  // namespace

TEST_CASE("search index: normalised strings are case- and accent-insensitive, Chinese unchanged") {
  CHECK(normalise_string("Müller") == "muller");
  CHECK(normalise_string("  ÉLODIE   Dupré ") == "elodie dupre");
  CHECK(normalise_string("Straße") == "strasse");
  CHECK(normalise_string("王小明") == "王小明");
  CHECK(normalise_string("ＡＢＣ１２３") == "abc123");
  CHECK(normalise_string("ΑΘΗΝΑ") == "αθηνα");
  CHECK(normalise_string(std::string("a\xff" "b")) == std::string("a\xff" "b"));
}

TEST_CASE("search index: date ranges follow the value's precision and zone") {
  auto year = fhir_date_range("2013");
  REQUIRE(year);
  CHECK(year->low == "2013-01-01T00:00:00.000000000+08:00");
  CHECK(year->high == "2014-01-01T00:00:00.000000000+08:00");
  auto month = fhir_date_range("2012-12");
  REQUIRE(month);
  CHECK(month->high == "2013-01-01T00:00:00.000000000+08:00");
  auto day = fhir_date_range("2012-02-29");
  REQUIRE(day);
  CHECK(day->high == "2012-03-01T00:00:00.000000000+08:00");
  auto seconds = fhir_date_range("2013-04-02T09:30:10+01:00");
  REQUIRE(seconds);
  CHECK(seconds->low == "2013-04-02T09:30:10.000000000+01:00");
  CHECK(seconds->high == "2013-04-02T09:30:11.000000000+01:00");
  auto millis = fhir_date_range("2015-02-07T23:59:59.999Z");
  REQUIRE(millis);
  CHECK(millis->high == "2015-02-08T00:00:00.000000000+00:00");
  CHECK_FALSE(fhir_date_range("2013-13"));
  CHECK_FALSE(fhir_date_range("2013-02-29"));
  CHECK_FALSE(fhir_date_range("2013-01-32"));
  CHECK_FALSE(fhir_date_range("2013-01-01+08:00"));  // a zone needs a time
  CHECK_FALSE(fhir_date_range("13-01-01"));
  CHECK_FALSE(fhir_date_range("2013-01-01T10:00:00X"));
}

TEST_CASE("search index: Patient example rows for string, token, date and reference parameters") {
  auto rows = rows_of("Patient-example.json");
  CHECK(has(rows.strings, [](auto& r) { return r.param == "family" && r.norm == "chalmers" && r.exact == "Chalmers"; }));
  CHECK(has(rows.strings, [](auto& r) { return r.param == "name" && r.norm == "jim"; }));
  CHECK(has(rows.strings, [](auto& r) { return r.param == "address-city" && r.exact == "PleasantVille"; }));
  CHECK(has(rows.tokens, [](auto& r) {
    return r.param == "identifier" && r.system == "urn:oid:1.2.36.146.595.217.0.1" && r.code == "12345";
  }));
  CHECK(has(rows.tokens, [](auto& r) {
    return r.param == "identifier:of-type" && r.system == "http://terminology.hl7.org/CodeSystem/v2-0203" &&
           r.code == "MR|12345";
  }));
  CHECK(has(rows.tokens, [](auto& r) { return r.param == "gender" && r.code == "male"; }));
  CHECK(has(rows.tokens, [](auto& r) { return r.param == "active" && r.code == "true"; }));
  CHECK(has(rows.tokens, [](auto& r) { return r.param == "phone" && r.code == "(03) 5555 6473"; }));
  CHECK(has(rows.dates, [](auto& r) {
    return r.param == "birthdate" && r.low == "1974-12-25T00:00:00.000000000+08:00" &&
           r.high == "1974-12-26T00:00:00.000000000+08:00";
  }));
  CHECK(has(rows.references, [](auto& r) {
    return r.param == "organization" && r.target_type == "Organization" && r.target_id == "1";
  }));
  CHECK_FALSE(has(rows.tokens, [](auto& r) { return r.param == "_id"; }));
}

TEST_CASE("search index: Observation quantity with UCUM canonical form, coding display, composite groups") {
  auto rows = rows_of("Observation-example.json");
  CHECK(has(rows.tokens, [](auto& r) {
    return r.param == "code" && r.system == "http://loinc.org" && r.code == "29463-7" &&
           r.text_norm.find("body weight") != std::string::npos;
  }));
  CHECK(has(rows.references, [](auto& r) { return r.param == "subject" && r.target_id == "example"; }));
  CHECK(has(rows.references, [](auto& r) { return r.param == "patient" && r.target_type == "Patient"; }));
  CHECK(has(rows.quantities, [](auto& r) {
    return r.param == "value-quantity" && r.value == "185" && r.code == "[lb_av]" && r.canonical_code == "g";
  }));
  // code-value-quantity: component 0 is the code, component 1 the quantity, both in group 1.
  CHECK(has(rows.tokens, [](auto& r) { return r.param == "code-value-quantity$0" && r.group == 1 && r.code == "29463-7"; }));
  CHECK(has(rows.quantities, [](auto& r) { return r.param == "code-value-quantity$1" && r.group == 1; }));
  CHECK(has(rows.dates, [](auto& r) { return r.param == "date"; }));

  auto bp = rows_of("Observation-blood-pressure.json");
  int groups = 0;
  for (const auto& r : bp.tokens)
    if (r.param == "component-code-value-quantity$0") groups = std::max(groups, r.group);
  CHECK(groups == 2);  // systolic and diastolic components
  CHECK(has(bp.quantities, [](auto& r) {
    return r.param == "component-value-quantity" && r.code == "mm[Hg]" && r.value == "107";
  }));
}

TEST_CASE("search index: periods, canonical references and Reference.identifier") {
  auto encounter = rows_of("Encounter-f001.json");
  CHECK(has(encounter.references, [](auto& r) { return r.param == "subject" && r.target_id == "f001"; }));
  auto questionnaire_response = rows_of("QuestionnaireResponse-gcs.json");
  CHECK(has(questionnaire_response.references, [](auto& r) {
    return r.param == "questionnaire" && r.url == "Questionnaire/gcs" && r.target_type == "Questionnaire" &&
           r.target_id == "gcs";
  }));
  auto value_set = rows_of("ValueSet-example-expansion.json");
  CHECK(has(value_set.uris, [](auto& r) { return r.param == "url"; }));

  fhir::value observation = test::parse_json_or_fail(R"({"resourceType":"Observation","status":"final",
    "code":{"text":"glucose"},
    "subject":{"identifier":{"system":"urn:oid:2.16.156.10011.1.3","value":"110101199003074477"}},
    "effectivePeriod":{"start":"2024-01-01T08:00:00+08:00"}})");
  auto rows = extract_index_rows(fhir::definitions::r4(), observation);
  CHECK(has(rows.tokens, [](auto& r) {
    return r.param == "subject:identifier" && r.system == "urn:oid:2.16.156.10011.1.3" && r.code == "110101199003074477";
  }));
  CHECK(has(rows.tokens, [](auto& r) { return r.param == "code" && r.code.empty() && r.text_norm == "glucose"; }));
  CHECK(has(rows.dates, [](auto& r) {
    return r.param == "date" && r.low == "2024-01-01T08:00:00.000000000+08:00" && r.high == "infinity";
  }));
}

TEST_CASE("search index: every official example indexes without an exception") {
  std::size_t resources = 0, with_rows = 0, rows = 0;
  std::chrono::nanoseconds spent{0};
  for (const auto& e : std::filesystem::directory_iterator(YILIAN_FHIR_PACKAGE_DIR)) {
    if (e.path().extension() != ".json" || e.path().filename() == "package.json") continue;
    fhir::value v;
    fhir::issue_list issues;
    if (!fhir::parse_json(test::read_file(e.path()), v, issues) || !v.find("resourceType")) continue;
    auto start = test::cpu_clock::now();
    index_rows r = extract_index_rows(fhir::definitions::r4(), v);
    spent += test::cpu_clock::now() - start;
    std::size_t n = r.strings.size() + r.tokens.size() + r.references.size() + r.dates.size() + r.numbers.size() +
                    r.quantities.size() + r.uris.size();
    ++resources;
    rows += n;
    with_rows += n > 0;
  }
  MESSAGE(resources << " examples, " << rows << " index rows, "
                    << static_cast<long>(resources / (std::chrono::duration<double>(spent).count() + 1e-9))
                    << " resources/s (CPU)");
  CHECK(resources > 5000);
  CHECK(with_rows > resources * 9 / 10);
  CHECK(rows > resources * 10);
}

TEST_CASE("search index: a write replaces the resource's rows and a delete removes them") {
  std::string url = test::fresh_database_url("search_index");
  if (url.empty()) {
    MESSAGE("skipped: YILIAN_TEST_DATABASE_URL_FILE is not set");
    return;
  }
  gateway::resource_store store(url, 1);
  store.migrate();
  gateway::request_context ctx;
  auto count = [&](const char* table, const std::string& param) {
    pqxx::connection c(url);
    pqxx::nontransaction tx(c);
    return tx.exec_params(std::string("SELECT count(*) FROM ") + table +
                              " WHERE res_type = 'Patient' AND res_id = 'p1' AND param = $1",
                          param)[0][0]
        .as<int>();
  };
  fhir::value p = test::parse_json_or_fail(
      R"({"resourceType":"Patient","name":[{"family":"王","given":["小明"]}],"birthDate":"1990-03-07","gender":"male"})");
  store.update(ctx, "Patient", "p1", p);
  CHECK(count("index_string", "family") == 1);
  CHECK(count("index_date", "birthdate") == 1);
  CHECK(count("index_token", "gender") == 1);
  fhir::value p2 = test::parse_json_or_fail(R"({"resourceType":"Patient","name":[{"family":"李"},{"family":"Li"}]})");
  store.update(ctx, "Patient", "p1", p2);
  CHECK(count("index_string", "family") == 2);
  CHECK(count("index_date", "birthdate") == 0);
  CHECK(count("index_token", "gender") == 0);
  store.remove(ctx, "Patient", "p1");
  CHECK(count("index_string", "family") == 0);
}
