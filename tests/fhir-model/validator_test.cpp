#include "yilian/fhir/validator.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "yilian/fhir/json.hpp"

using yilian::fhir::is_valid_primitive;
using yilian::fhir::issue_list;
using yilian::fhir::issue_type;
using yilian::fhir::parse_json;
using yilian::fhir::to_json;
using yilian::fhir::to_operation_outcome;
using yilian::fhir::validate_resource;
using yilian::fhir::validation_options;
using yilian::fhir::value;

namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& path) { return yilian::test::read_file(path); }
value parse(std::string_view text) { return yilian::test::parse_json_or_fail(text); }

issue_list validate(std::string_view json, validation_options options = {}) {
  issue_list issues;
  validate_resource(parse(json), issues, options);
  return issues;
}

std::string describe(const issue_list& issues) {
  std::string out;
  for (const auto& i : issues.all()) out += std::string(to_string(i.type)) + " @" + i.location + ": " + i.diagnostics + "\n";
  return out;
}

bool has_issue(const issue_list& issues, issue_type type, std::string_view location) {
  return std::any_of(issues.all().begin(), issues.all().end(),
                     [&](const auto& i) { return i.type == type && i.location == location; });
}

}  // namespace

TEST_CASE("valid primitives: formats") {
  struct sample {
    const char* type;
    const char* text;
    bool ok;
  };
  const sample samples[] = {
      {"id", "abc-1.2", true},          {"id", "a_b", false},
      {"id", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
      {"date", "2024", true},           {"date", "2024-02", true},
      {"date", "2024-02-29", true},     {"date", "2023-02-29", false},
      {"date", "1952-13-40", false},    {"date", "0000", false},
      {"date", "2024-1-01", false},     {"dateTime", "2024-05-06T10:11:12+08:00", true},
      {"dateTime", "2024-05-06T10:11:12.123Z", true},
      {"dateTime", "2024-05-06T10:11", false},
      {"dateTime", "2024-05-06T10:11:12", false},
      {"dateTime", "2024-05", true},    {"instant", "2024-05-06T10:11:12Z", true},
      {"instant", "2024-05-06", false}, {"instant", "2024-05-06T10:11:12+14:00", true},
      {"instant", "2024-05-06T10:11:12+14:30", false},
      {"time", "23:59:60", true},       {"time", "24:00:00", false},
      {"decimal", "-0.50", true},       {"decimal", "1e10", true},
      {"decimal", "01", false},         {"decimal", "1.", false},
      {"integer", "-2147483648", true}, {"integer", "2147483648", false},
      {"integer", "1.0", false},        {"positiveInt", "0", false},
      {"positiveInt", "1", true},       {"unsignedInt", "0", true},
      {"unsignedInt", "-1", false},     {"boolean", "true", true},
      {"boolean", "yes", false},        {"uri", "http://a/b", true},
      {"uri", "http://a b", false},     {"canonical", "http://x|1.0", true},
      {"oid", "urn:oid:1.2.840.10008", true},
      {"oid", "urn:oid:1", false},      {"oid", "urn:oid:1.02", false},
      {"uuid", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", true},
      {"uuid", "urn:uuid:C757873D-ec9a-4326-a141-556f43239520", false},
      {"code", "a b", true},            {"code", " a", false},
      {"code", "a  b", false},          {"code", "a ", false},
      {"base64Binary", "aGVsbG8=", true},
      {"base64Binary", "aGVsbG8", false},
      {"string", "line\nnext\ttab", true},
      {"string", "bell\x07", false},    {"markdown", "# title", true},
  };
  for (const auto& s : samples) {
    CAPTURE(s.type);
    CAPTURE(s.text);
    CHECK(is_valid_primitive(s.type, s.text) == s.ok);
  }
  CHECK(is_valid_primitive("string", std::string(1024 * 1024, 'x')));
  CHECK(is_valid_primitive("string", "\u4e2d\u6587 and more than eight bytes\r\n"));
  CHECK_FALSE(is_valid_primitive("string", "more than eight bytes \x01 then more"));
  CHECK(is_valid_primitive("xhtml", "<div xmlns=\"http://www.w3.org/1999/xhtml\">" + std::string(2 * 1024 * 1024, 'x') + "</div>"));
  CHECK_FALSE(is_valid_primitive("string", std::string(1024 * 1024 + 1, 'x')));
}

// The hand-written checkers agree with the official regexes of the definitions, except where they
// are deliberately stricter: real calendar days, the 32-bit range, control characters in strings.
TEST_CASE("valid primitives: hand-written checkers agree with the official regexes") {
  const char* samples[] = {
      "0", "1", "-1", "-0", "01", "1.5", "-0.50", "1e10", "1E-3", "1.", ".5", "true", "false", "True", "2147483647",
      "2024", "2024-02", "2024-02-29", "2024-1-01", "2024-13", "0000", "0001", "1000", "2024-05-06T10:11:12Z",
      "2024-05-06T10:11:12.5+08:00", "2024-05-06T10:11:12", "2024-05-06T10:11Z", "2024-05-06T24:00:00Z",
      "2024-05-06T10:11:12+14:00", "2024-05-06T10:11:12-14:01", "2024-05T10:11:12Z", "10:11:12", "10:11",
      "23:59:60.123", "abc", "a-b.c", "a_b", "a b", "a  b", " a", "a ", "a\tb", "http://x/y?z=1|2", "urn:oid:1.2.3",
      "urn:oid:1", "urn:oid:3.1", "urn:oid:1.02", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
      "urn:uuid:c757873d-ec9a-4326-a141-556f4323952", "urn:uuid:C757873D-ec9a-4326-a141-556f43239520",
      "aGVsbG8=", "aGVsbG8", "aGVs bG8=", "aGVsbG8=\n", "+/==", "line\nnext", "\u4e2d\u6587", "#*markdown*",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
  int compared = 0;
  for (const char* name : {"base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
                           "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
                           "uri", "url", "uuid"}) {
    const auto* type = yilian::fhir::definitions::r4().find_type(name);
    REQUIRE(type != nullptr);
    REQUIRE_FALSE(type->regex.empty());
    std::regex re(type->regex, std::regex::ECMAScript);
    for (const char* sample : samples) {
      CAPTURE(name);
      CAPTURE(sample);
      std::string_view text = sample;
      bool official = std::regex_match(text.begin(), text.end(), re);
      if (std::string_view(name) == "integer" || std::string_view(name) == "positiveInt" ||
          std::string_view(name) == "unsignedInt")
        official = official && text.size() <= 11 && std::stoll(std::string(text)) <= 2147483647;
      CHECK(is_valid_primitive(name, text) == official);
      ++compared;
    }
  }
  CHECK(compared > 1000);
}

TEST_CASE("validator: element paths and issue codes") {
  SUBCASE("a valid resource") {
    auto issues = validate(R"({"resourceType":"Patient","id":"p1","name":[{"family":"Chen","given":["Guo","Hua"]}],
      "gender":"male","birthDate":"1952-03-04","_birthDate":{"extension":[{"url":"http://x","valueTime":"10:00:00"}]}})");
    CHECK_MESSAGE(issues.empty(), describe(issues));
  }
  SUBCASE("the result reflects only the issues this call added") {
    issue_list issues;
    issues.error(issue_type::processing, "earlier problem");
    CHECK(validate_resource(parse(R"({"resourceType":"Patient"})"), issues));
    CHECK(issues.size() == 1);
  }
  SUBCASE("nested path with index") {
    auto issues = validate(R"({"resourceType":"Patient","name":[{"given":["a"]},{"given":["b",""]}]})");
    CHECK_MESSAGE(has_issue(issues, issue_type::structure, "Patient.name[1].given[1]"), describe(issues));
  }
  SUBCASE("Bundle entries are validated as resources") {
    auto issues = validate(R"({"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","foo":1}}]})");
    CHECK_MESSAGE(has_issue(issues, issue_type::structure, "Bundle.entry[0].resource.foo"), describe(issues));
  }
  SUBCASE("Parameters.parameter.resource") {
    auto issues = validate(R"({"resourceType":"Parameters","parameter":[{"name":"x","resource":{"resourceType":"Observation"}}]})");
    CHECK_MESSAGE(has_issue(issues, issue_type::required, "Parameters.parameter[0].resource.status"), describe(issues));
  }
  SUBCASE("expected type") {
    validation_options options;
    options.expected_type = "Observation";
    auto issues = validate(R"({"resourceType":"Patient"})", options);
    CHECK(issues.has_errors());
  }
  SUBCASE("required bindings can be switched off") {
    validation_options options;
    options.check_required_bindings = false;
    CHECK(validate(R"({"resourceType":"Patient","gender":"boy"})", options).empty());
    CHECK(validate(R"({"resourceType":"Patient","gender":"boy"})").has_errors());
  }
  SUBCASE("Coding with a required binding is checked when the system matches") {
    auto bad = validate(R"({"resourceType":"Condition","subject":{"reference":"Patient/p"},"clinicalStatus":{"coding":[
      {"system":"http://example.org/local","code":"whatever"},
      {"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"bogus"}]}})");
    CHECK_MESSAGE(bad.size() == 1, describe(bad));
    CHECK(has_issue(bad, issue_type::code_invalid, "Condition.clinicalStatus.coding[1].code"));
    auto good = validate(R"({"resourceType":"Condition","subject":{"reference":"Patient/p"},"clinicalStatus":{"coding":[
      {"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]}})");
    CHECK_MESSAGE(good.empty(), describe(good));
  }
  SUBCASE("one type per choice element") {
    auto issues = validate(R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"a","valueBoolean":true})");
    CHECK_MESSAGE(has_issue(issues, issue_type::structure, "Observation.valueBoolean"), describe(issues));
  }
}

TEST_CASE("validator: never crashes on hostile input") {
  SUBCASE("deep nesting") {
    // Built by hand: the JSON parser has its own depth limit.
    value root = parse(R"({"resourceType":"Questionnaire","status":"draft"})");
    value* parent = &root;
    for (int i = 0; i < 2000; ++i) {
      value item = value::make_object();
      item.set("linkId", value::make_string("x"));
      item.set("type", value::make_string("group"));
      value items = value::make_array();
      items.push_back(std::move(item));
      parent = &parent->set("item", std::move(items)).items().back();
    }
    issue_list issues;
    CHECK_FALSE(validate_resource(root, issues));
    CHECK_MESSAGE(issues.size() == 1, describe(issues));
    CHECK(issues.all()[0].type == issue_type::too_costly);
  }
  SUBCASE("choice suffixes are exact") {
    for (const char* text : {R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"valuestring":"a"})",
                             R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"valueReference":{"reference":"Patient/p"}})",
                             R"({"resourceType":"Observation","status":"final","code":{"text":"x"},"value":"a"})"}) {
      CAPTURE(text);
      auto issues = validate(text);
      std::string location = "Observation.";
      location += parse(text).members().back().name;
      CHECK_MESSAGE(has_issue(issues, issue_type::structure, location), describe(issues));
    }
  }
  SUBCASE("odd shapes") {
    for (const char* text : {"[]", "1", "null", R"({"resourceType":1})", R"({"resourceType":"Resource"})",
                             R"({"resourceType":"Patient","_":{}})", R"({"resourceType":"Patient","_name":[null]})",
                             R"({"resourceType":"Patient","contained":[1,null,[]]})",
                             R"({"resourceType":"Patient","extension":[{"url":"u","valueFoo":1}]})"}) {
      CAPTURE(text);
      issue_list issues;
      CHECK_FALSE(validate_resource(parse(text), issues));
    }
  }
  SUBCASE("huge array") {
    value p = parse(R"({"resourceType":"Patient"})");
    value names = value::make_array();
    for (int i = 0; i < 100000; ++i) {
      value n = value::make_object();
      n.set("text", value::make_string(std::to_string(i)));
      names.push_back(std::move(n));
    }
    p.set("name", std::move(names));
    issue_list issues;
    CHECK(validate_resource(p, issues));
  }
}

// Golden files: tests/data/validation/<name>.json is an invalid resource, <name>.outcome.json the
// OperationOutcome the validator produces. YILIAN_UPDATE_GOLDEN=1 rewrites the outcomes. A name
// starting with "as-<Type>-" validates with expected_type = <Type> (the type a request URL names).
TEST_CASE("validator: golden OperationOutcomes") {
  fs::path dir = fs::path(YILIAN_SOURCE_DIR) / "tests/data/validation";
  bool update = std::getenv("YILIAN_UPDATE_GOLDEN") != nullptr && std::string(std::getenv("YILIAN_UPDATE_GOLDEN")) == "1";
  std::vector<fs::path> inputs;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    if (name.ends_with(".json") && !name.ends_with(".outcome.json")) inputs.push_back(entry.path());
  }
  std::sort(inputs.begin(), inputs.end());
  CHECK(inputs.size() >= 15);
  for (const auto& input : inputs) {
    std::string name = input.stem().string();
    CAPTURE(name);
    validation_options options;
    std::string expected_type;
    if (name.starts_with("as-")) {
      expected_type = name.substr(3, name.find('-', 3) - 3);
      options.expected_type = expected_type;
    }
    issue_list issues;
    CHECK_FALSE(validate_resource(parse(read_text(input)), issues, options));
    std::string actual = to_json(to_operation_outcome(issues), {.pretty = true});
    if (!actual.ends_with('\n')) actual += '\n';
    fs::path golden = dir / (name + ".outcome.json");
    if (update) {
      std::ofstream(golden, std::ios::binary) << actual;
      continue;
    }
    REQUIRE_MESSAGE(fs::exists(golden), "missing " << golden << " (run with YILIAN_UPDATE_GOLDEN=1)");
    CHECK(read_text(golden) == actual);
  }
}

// Every official example validates without errors, except those listed (with the reason) in
// tests/data/validation-known-invalid-examples.txt, which must fail.
TEST_CASE("validator: official R4 examples") {
  fs::path dir = YILIAN_FHIR_PACKAGE_DIR;
  REQUIRE_MESSAGE(fs::exists(dir), "official examples not found at " << dir << ": run scripts/fetch-fhir-package");
  auto known = yilian::test::known_failures("validation-known-invalid-examples.txt");
  int checked = 0, failed = 0, unexpected = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::string file = entry.path().filename().string();
    if (!file.ends_with(".json") || file == "package.json" || file.starts_with(".")) continue;
    value v;
    issue_list parse_issues;
    if (!parse_json(read_text(entry.path()), v, parse_issues)) continue;  // the JSON tests cover parsing
    if (!v.is_object() || v.find("resourceType") == nullptr) continue;
    ++checked;
    issue_list issues;
    bool ok = validate_resource(v, issues);
    if (!ok) ++failed;
    bool expected_ok = !known.contains(file);
    if (ok != expected_ok) {
      ++unexpected;
      if (unexpected <= 30) {
        if (ok)
          MESSAGE(file << " is listed as invalid but validates");
        else
          MESSAGE(file << ":\n" << describe(issues));
      }
    }
  }
  MESSAGE(checked << " official examples validated, " << failed << " rejected (" << known.size()
                  << " known invalid)");
  CHECK(checked > 1000);
  CHECK(unexpected == 0);
}
