#include "yilian/fhir/fhirpath.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "yilian/fhir/json.hpp"

using namespace yilian::fhir;
namespace fp = yilian::fhir::fhirpath;

namespace {

value parse(std::string_view text) {
  value v;
  issue_list issues;
  REQUIRE(parse_json(text, v, issues));
  return v;
}

std::size_t error_position(std::string_view expr) {
  try {
    fp::compile(expr);
  } catch (const fp::syntax_error& e) {
    return e.position();
  }
  FAIL("no syntax error for " << expr);
  return 0;
}

std::vector<std::string> texts(const fp::collection& c) {
  std::vector<std::string> out;
  for (const auto& it : c) out.push_back(it.to_string().value_or("<complex>"));
  return out;
}

std::vector<std::string> eval_texts(std::string_view expr, const value& resource, const fp::evaluate_options& o = {}) {
  return texts(fp::compile(expr).evaluate(resource, o));
}

const char* const patient_json = R"({
  "resourceType": "Patient",
  "id": "p1",
  "extension": [{"url": "http://example.org/ext/eye-colour", "valueCode": "brown"}],
  "active": true,
  "name": [
    {"use": "official", "family": "Chalmers", "given": ["Peter", "James"], "_given": [null, {"extension": [{"url": "http://example.org/ext/x", "valueString": "jj"}]}]},
    {"use": "nickname", "given": ["Jim"]}
  ],
  "birthDate": "1974-12-25",
  "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
  "deceasedBoolean": false,
  "managingOrganization": {"reference": "Organization/o1"}
})";

}  // namespace

TEST_CASE("fhirpath: syntax errors carry the offending position") {
  CHECK(error_position("name.given.") == 11);
  CHECK(error_position("1 +") == 3);
  CHECK(error_position("'abc") == 0);
  CHECK(error_position("name.frobnicate()") == 5);
  CHECK(error_position("name.substring()") == 5);
  CHECK(error_position("name.where(given = 'x'") == 22);
  CHECK(error_position("2 + 2 /* open") == 6);
  CHECK(error_position("a ! b") == 2);
  CHECK(error_position("") == 0);
  CHECK(error_position("(1 | 2") == 6);
  try {
    fp::compile("name.given.");
  } catch (const fp::syntax_error& e) {
    CHECK(std::string(e.what()).find("offset 11") != std::string::npos);
  }
  CHECK_NOTHROW(fp::compile("Patient.name.where(use = 'official').given.first()"));
  // Hostile input cannot exhaust the stack.
  CHECK(error_position(std::string(5000, '(') + "1" + std::string(5000, ')')) < 5000);
  std::string chain = "a";
  for (int i = 0; i < 5000; ++i) chain += ".a";
  CHECK_THROWS_AS(fp::compile(chain), fp::syntax_error);
  CHECK_THROWS_AS(fp::compile("'a'.matches('(')"), fp::syntax_error);
}

TEST_CASE("fhirpath: navigation and functions on a small Patient") {
  value patient = parse(patient_json);

  CHECK(eval_texts("name.given", patient) == std::vector<std::string>{"Peter", "James", "Jim"});
  CHECK(eval_texts("Patient.name.where(use = 'official').family", patient) == std::vector<std::string>{"Chalmers"});
  CHECK(eval_texts("name.exists(use = 'nickname')", patient) == std::vector<std::string>{"true"});
  CHECK(eval_texts("name.where(use = 'maiden').exists()", patient) == std::vector<std::string>{"false"});
  CHECK(eval_texts("name.given.count() + 1", patient) == std::vector<std::string>{"4"});

  SUBCASE("choice elements and types") {
    CHECK(eval_texts("Patient.deceased", patient) == std::vector<std::string>{"false"});
    CHECK(eval_texts("Patient.deceased.ofType(boolean)", patient) == std::vector<std::string>{"false"});
    CHECK(eval_texts("Patient.deceased.ofType(dateTime)", patient).empty());
    CHECK(eval_texts("Patient.deceased is boolean", patient) == std::vector<std::string>{"true"});
    auto items = fp::compile("name.given").evaluate(patient);
    REQUIRE(items.size() == 3);
    CHECK(items[0].fhir_type == "string");
    CHECK(fp::compile("birthDate").evaluate(patient)[0].fhir_type == "date");
    CHECK(fp::compile("Patient.id").evaluate(patient)[0].fhir_type == "id");
    value q = parse(R"({"resourceType": "Questionnaire", "status": "draft",
      "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}]})");
    CHECK(eval_texts("item.item.type().name", q) == std::vector<std::string>{"BackboneElement"});
    CHECK(eval_texts("item.item.linkId", q) == std::vector<std::string>{"1.1"});
    CHECK_THROWS_AS(fp::compile("Patient.deceasedBoolean").evaluate(patient), fp::evaluation_error);
  }

  SUBCASE("extensions, including those on primitives") {
    CHECK(eval_texts("extension('http://example.org/ext/eye-colour').value", patient) == std::vector<std::string>{"brown"});
    CHECK(eval_texts("birthDate.extension(%`ext-patient-birthTime`).value", patient) ==
          std::vector<std::string>{"1974-12-25T14:35:45-05:00"});
    CHECK(eval_texts("name.given.where(extension('http://example.org/ext/x').exists())", patient) ==
          std::vector<std::string>{"James"});
    CHECK(eval_texts("name.given.select($this.hasValue())", patient) == std::vector<std::string>{"true", "true", "true"});
  }

  SUBCASE("paths when asked for") {
    fp::evaluate_options o;
    o.track_paths = true;
    auto items = fp::compile("name.given").evaluate(patient, o);
    REQUIRE(items.size() == 3);
    CHECK(items[1].path == "Patient.name[0].given[1]");
    CHECK(items[2].path == "Patient.name[1].given[0]");
  }

  SUBCASE("user variables and errors") {
    fp::evaluate_options o;
    o.variables["minimum"] = {fp::item::make_integer(2)};
    CHECK(eval_texts("name.given.count() >= %minimum", patient, o) == std::vector<std::string>{"true"});
    CHECK_THROWS_AS(fp::compile("%unknown").evaluate(patient), fp::evaluation_error);
    CHECK_THROWS_AS(fp::compile("name.single()").evaluate(patient), fp::evaluation_error);
    CHECK_THROWS_AS(fp::compile("1 + 'a'").evaluate(patient), fp::evaluation_error);
    CHECK_THROWS_AS(fp::compile("99999999999999999999.0 * 99999999999999999999.0").evaluate(patient), fp::evaluation_error);
    CHECK_THROWS_AS(fp::compile("9223372036854775807 + 1"), fp::syntax_error);
    CHECK_THROWS_AS(fp::compile("2147483647 * 2147483647 * 2147483647").evaluate(patient), fp::evaluation_error);
    CHECK_THROWS_AS(fp::compile("(-1073741824 * 1073741824 * 8) div -1").evaluate(patient), fp::evaluation_error);
    CHECK(eval_texts("(-1073741824 * 1073741824 * 8) mod -1", patient) == std::vector<std::string>{"0"});
  }

  SUBCASE("boolean helper") {
    CHECK(fp::compile("active").evaluate_boolean(patient) == true);
    CHECK(fp::compile("name.where(use = 'x')").evaluate_boolean(patient) == std::nullopt);
  }
}

TEST_CASE("fhirpath: system values (dates, quantities, decimals)") {
  value empty = parse(R"({"resourceType": "Basic", "code": {"text": "x"}})");
  struct row {
    const char* expression;
    std::vector<std::string> expected;
  };
  const row rows[] = {
      {"@2020-01-31 + 1 month", {"2020-02-29"}},
      {"@2020-02-29 + 1 year", {"2021-02-28"}},
      {"@2019-12-31T23:59:59Z + 1 second", {"2020-01-01T00:00:00Z"}},
      {"@T10:00 + 3 hours", {"13:00"}},
      {"@2020-01-01T10:00:00+02:00 = @2020-01-01T08:00:00Z", {"true"}},
      {"@2020-01-01 = @2020-01-01T10:00", {}},
      {"@2020-01 < @2020-02-15", {"true"}},
      {"1 'kg' = 1000 'g'", {"true"}},
      {"1 '[lb_av]' < 1 'kg'", {"true"}},
      {"1 'L' = 1000 'mL'", {"true"}},
      {"5 'mg/dL' = 50 'mg/L'", {"true"}},
      {"1 'h' = 60 'min'", {"true"}},
      {"1 year = 1 'a'", {}},
      {"1 'm' + 50 'cm'", {"1.50000000 'm'"}},
      {"10 'mg'.toQuantity('g') = 0.01 'g'", {"true"}},
      {"0.1 + 0.2 = 0.3", {"true"}},
      {"10 / 3", {"3.33333333"}},
      {"(10 / 3).round(3)", {"3.333"}},
      {"1.50 * 2", {"3.00"}},
      {"-7 div 2", {"-3"}},
      {"7 mod -2", {"1"}},
      {"1.1.ceiling()", {"2"}},
      {"2.power(10)", {"1024"}},
      {"(-3).power(3)", {"-27"}},
      {"1.power(1000000000000)", {"1"}},
      {"2.power(100)", {}},
      {"(-1.1).floor()", {"-2"}},
      {"1 '%' = 0.01 '1'", {"true"}},
      {"Basic.code.text & '-' & 'y'", {"x-y"}},
      {"@2015-02T.toString()", {"2015-02"}},
      {"'2015-02-04'.toDateTime().toString()", {"2015-02-04"}},
  };
  for (const row& r : rows) {
    CAPTURE(r.expression);
    CHECK(eval_texts(r.expression, empty) == r.expected);
  }
  fp::evaluate_options o;
  o.now = fp::parse_temporal("2024-05-06T07:08:09.010Z", fp::item_kind::datetime);
  CHECK(eval_texts("today()", empty, o) == std::vector<std::string>{"2024-05-06"});
  CHECK(eval_texts("now()", empty, o) == std::vector<std::string>{"2024-05-06T07:08:09.010Z"});
  CHECK(eval_texts("timeOfDay()", empty, o) == std::vector<std::string>{"07:08:09.010"});
}

TEST_CASE("fhirpath: resolve() within a Bundle and contained resources") {
  value bundle = parse(R"({"resourceType": "Bundle", "type": "collection", "entry": [
    {"fullUrl": "http://example.org/fhir/Patient/p1", "resource": )" + std::string(patient_json) + R"(},
    {"fullUrl": "http://example.org/fhir/Organization/o1", "resource": {"resourceType": "Organization", "id": "o1", "name": "Acme"}}
  ]})");
  CHECK(eval_texts("Bundle.entry.resource.ofType(Patient).managingOrganization.resolve().name", bundle) ==
        std::vector<std::string>{"Acme"});
  CHECK(eval_texts("entry.resource.ofType(Patient).managingOrganization.resolve() is Organization", bundle) ==
        std::vector<std::string>{"true"});
  CHECK(eval_texts("entry[1].resource.id", bundle) == std::vector<std::string>{"o1"});

  value with_contained = parse(R"({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
    "contained": [{"resourceType": "Patient", "id": "pat", "gender": "female"}],
    "subject": {"reference": "#pat"}})");
  CHECK(eval_texts("subject.resolve().gender", with_contained) == std::vector<std::string>{"female"});

  // Outside a Bundle the target's type still comes from the reference (search parameters use
  // "subject.where(resolve() is Patient)").
  value obs = parse(R"({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
    "subject": {"reference": "http://example.org/fhir/Patient/7/_history/2"},
    "performer": [{"reference": "Practitioner/1"}, {"reference": "Organization/2"}, {"type": "Patient", "identifier": {"value": "x"}}]})");
  CHECK(fp::compile("Observation.subject.where(resolve() is Patient)").evaluate(obs).size() == 1);
  CHECK(fp::compile("Observation.subject.where(resolve() is Group)").evaluate(obs).empty());
  CHECK(fp::compile("performer.where(resolve() is Organization)").evaluate(obs).size() == 1);
  CHECK(fp::compile("performer.where(resolve() is Patient)").evaluate(obs).size() == 1);
  CHECK(fp::compile("performer.resolve()").evaluate(obs).size() == 3);
}

TEST_CASE("fhirpath: regular expressions are single-line and may be precompiled") {
  value patient = parse(patient_json);
  CHECK(eval_texts("'A\nB'.matches('A.B')", patient) == std::vector<std::string>{"true"});
  CHECK(eval_texts("name.family.matches('^Ch.*s$')", patient) == std::vector<std::string>{"true"});
  CHECK(eval_texts("'abc'.matches('[' + 'a]')", patient) == std::vector<std::string>{"true"});
  CHECK_THROWS_AS(fp::compile("'a'.matches('(')"), fp::syntax_error);
  CHECK_THROWS_AS(fp::compile("'a'.matches('(' + '')").evaluate(patient), fp::evaluation_error);
}

TEST_CASE("fhirpath: invariants on a datatype element") {
  value patient = parse(patient_json);
  const value& name = patient.find("name")->items()[0];
  fp::collection input{fp::node_item(name, "HumanName")};
  auto r = fp::compile("family.exists() and given.count() = 2 and $this is HumanName").evaluate(input, &patient);
  REQUIRE(r.size() == 1);
  CHECK(r[0].boolean_value);
  CHECK(fp::compile("%resource.id").evaluate(input, &patient)[0].to_string() == "p1");
}

TEST_CASE("fhirpath: random token soup only ever raises the two documented errors") {
  value patient = parse(patient_json);
  const char* const tokens[] = {
      "name", "given", "family", ".", "(", ")", "[", "]", "0", "1", "2.5", "'a'", "@2020", "@2020-01-02T10:00Z", "@T10:00",
      "where", "select", "exists", "all", "repeat", "descendants", "children", "first", "skip", "count", "iif", "not", "+",
      "-", "*", "/", "div", "mod", "&", "|", "=", "~", "<", ">=", "and", "or", "implies", "is", "as", "String", "Quantity",
      "$this", "$index", "$total", "%resource", "{}", ",", "true", "3 'mg'", "4 days", "ofType", "extension", "value",
      "resolve", "toString", "toQuantity", "substring", "matches", "'[a-z]+'", "aggregate", "sort", "lowBoundary", "power",
      "round", "union", "exclude", "type", "birthDate", "split", "encode", "'hex'", "toChars", "indexOf", "contains", "in"};
  std::uint32_t state = 12345;
  auto next = [&] { return state = state * 1664525u + 1013904223u; };
  int evaluated = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string e;
    int n = 1 + static_cast<int>(next() >> 8) % 10;
    for (int k = 0; k < n; ++k) {
      e += tokens[(next() >> 8) % std::size(tokens)];
      if ((next() >> 8) % 2) e += ' ';
    }
    try {
      (void)fp::compile(e).evaluate(patient);
      ++evaluated;
    } catch (const fp::syntax_error&) {
    } catch (const fp::evaluation_error&) {
    } catch (const std::exception& ex) {
      FAIL_CHECK(e << " threw " << ex.what());
    }
  }
  CHECK(evaluated > 1000);
}

TEST_CASE("fhirpath: compiled expressions are shared across threads") {
  value patient = parse(patient_json);
  fp::expression e = fp::compile("name.where(given.exists()).given.where($this.matches('^[PJ]')).count()");
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int k = 0; k < 200; ++k) {
        auto r = e.evaluate(patient);
        if (r.size() == 1 && r[0].integer_value == 3) ++ok;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(ok == 800);
}

TEST_CASE("fhirpath: every R4 search parameter compiles and evaluates on the official examples") {
  const definitions& defs = definitions::r4();
  std::map<std::string, fp::expression> compiled;
  for (const search_param_def& sp : defs.all_search_params()) {
    if (sp.expression.empty()) continue;
    CAPTURE(sp.url);
    CHECK_NOTHROW(compiled.emplace(sp.expression, fp::compile(sp.expression)));
  }
  CHECK(compiled.size() > 900);

  const std::filesystem::path dir = YILIAN_FHIR_PACKAGE_DIR;
  if (!std::filesystem::is_directory(dir)) {
    MESSAGE("package not unpacked at " << dir << "; evaluation skipped");
    return;
  }
  std::vector<value> resources;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto& p = entry.path();
    if (p.extension() != ".json" || p.filename() == "package.json" || p.filename().string().starts_with(".")) continue;
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    value resource;
    issue_list issues;
    if (!parse_json(ss.str(), resource, issues) || !resource.find("resourceType")) continue;
    resources.push_back(std::move(resource));
  }
  std::size_t files = resources.size(), evaluations = 0, items = 0;
  auto start = std::chrono::steady_clock::now();
  for (const value& resource : resources) {
    for (const search_param_def* sp : defs.search_params(resource.find("resourceType")->text())) {
      if (sp->expression.empty()) continue;
      auto it = compiled.find(sp->expression);
      if (it == compiled.end()) continue;
      try {
        items += it->second.evaluate(resource).size();
        ++evaluations;
      } catch (const fp::evaluation_error& e) {
        FAIL_CHECK(resource.find("resourceType")->text() << "/" << (resource.find("id") ? resource.find("id")->text() : "")
                                                         << " " << sp->code << ": " << std::string(e.what()) << " in "
                                                         << sp->expression);
      }
    }
  }
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count();
  MESSAGE(evaluations << " search parameter evaluations (" << items << " items) on " << files << " examples in "
                      << us / 1000 << " ms, " << (evaluations ? us * 1000 / static_cast<long long>(evaluations) : 0)
                      << " ns each");
  CHECK(files > 2000);
}
