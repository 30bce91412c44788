#include "yilian/fhir/fhirpath_patch.hpp"

#include <doctest/doctest.h>

#include "test_support.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "yilian/fhir/json.hpp"
#include "yilian/fhir/xml.hpp"

using yilian::fhir::apply_fhirpath_patch;
using yilian::fhir::issue_list;
using yilian::fhir::issue_type;
using yilian::fhir::parse_json;
using yilian::fhir::parse_xml;
using yilian::fhir::to_json;
using yilian::fhir::value;

namespace {

// The official suite (fhir-patch-tests.xml) is a flat list of
//   <case name=".." mode="both|forwards"><input>R</input><diff>Parameters</diff>
//   (<output>R</output> | <error msg=".."/>)</case>
// "mode" says whether the case also runs backwards (diff generation); applying always runs.
struct patch_case {
  std::string name;
  std::string input, diff, output;
  std::optional<std::string> error;
};

std::string unescape_attr(std::string s) {
  const std::pair<std::string_view, std::string_view> entities[] = {
      {"&apos;", "'"}, {"&quot;", "\""}, {"&lt;", "<"}, {"&gt;", ">"}, {"&amp;", "&"}};
  for (auto [from, to] : entities) {
    for (std::size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
      s.replace(p, from.size(), to);
  }
  return s;
}

std::string attr(std::string_view tag, std::string_view name) {
  std::string key = std::string(name) + "=\"";
  auto p = tag.find(key);
  if (p == std::string_view::npos) return {};
  p += key.size();
  return unescape_attr(std::string(tag.substr(p, tag.find('"', p) - p)));
}

std::string inner(std::string_view body, std::string_view element) {
  std::string open = "<" + std::string(element) + ">", close = "</" + std::string(element) + ">";
  auto b = body.find(open);
  if (b == std::string_view::npos) return {};
  b += open.size();
  auto e = body.find(close, b);
  return e == std::string_view::npos ? std::string() : std::string(body.substr(b, e - b));
}

std::vector<patch_case> load_cases(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // XML end-of-line handling (XML 1.0 section 2.11): the file has CRLF line ends; a case's text is
  // cut out here before any XML parser sees the whole document, so normalise as one would.
  std::string text;
  text.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r') {
      text += '\n';
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    } else {
      text += raw[i];
    }
  }
  std::vector<patch_case> out;
  for (std::size_t p = text.find("<case "); p != std::string::npos; p = text.find("<case ", p + 1)) {
    auto tag_end = text.find('>', p);
    auto end = text.find("</case>", tag_end);
    std::string_view tag(text.data() + p, tag_end - p);
    std::string_view body(text.data() + tag_end + 1, end - tag_end - 1);
    patch_case c;
    c.name = attr(tag, "name");
    c.input = inner(body, "input");
    c.diff = inner(body, "diff");
    c.output = inner(body, "output");
    if (auto e = body.find("<error "); e != std::string_view::npos)
      c.error = attr(body.substr(e, body.find('>', e) - e), "msg");
    out.push_back(std::move(c));
  }
  return out;
}

std::map<std::string, std::string> known_failures() { return yilian::test::known_failures("fhirpath-patch-known-failures.txt"); }

// Object member order is not significant for the comparison; nor is how the narrative XHTML
// writes a quote in text ("&quot;" in the source XML, a plain '"' in a patched string value).
void canonical_div(std::string& div) {
  for (std::size_t p = div.find("&quot;"); p != std::string::npos; p = div.find("&quot;", p + 1)) div.replace(p, 6, "\"");
}

void sort_members(value& v) {
  if (v.is_object()) {
    for (auto& m : v.members()) {
      if (m.name == "div" && m.val.is_string()) {
        std::string div = m.val.text();
        canonical_div(div);
        m.val.set_text(std::move(div));
      }
      sort_members(m.val);
    }
    std::sort(v.members().begin(), v.members().end(),
              [](const auto& a, const auto& b) { return a.name < b.name; });
  } else if (v.is_array()) {
    for (auto& item : v.items()) sort_members(item);
  }
}

std::string describe(const issue_list& issues) {
  std::string out;
  for (const auto& i : issues.all()) out += i.diagnostics + " @ " + i.location + "; ";
  return out;
}

// Runs one case; empty string on success, else what went wrong.
std::string run_case(const patch_case& c) {
  issue_list parse_issues;
  value input, diff, expected;
  if (!parse_xml(c.input, input, parse_issues)) return "input does not parse: " + describe(parse_issues);
  if (!parse_xml(c.diff, diff, parse_issues)) return "diff does not parse: " + describe(parse_issues);
  value original = input;
  issue_list issues;
  bool ok = apply_fhirpath_patch(input, diff, issues);
  if (c.error) {
    if (ok) return "expected error '" + *c.error + "' but the patch applied";
    if (!(input == original)) return "failed patch modified the resource";
    if (issues.all().empty() || issues.all()[0].diagnostics.find(*c.error) == std::string::npos)
      return "error message '" + describe(issues) + "' lacks '" + *c.error + "'";
    return {};
  }
  if (!ok) return "patch failed: " + describe(issues);
  if (!parse_xml(c.output, expected, parse_issues)) return "output does not parse: " + describe(parse_issues);
  sort_members(input);
  sort_members(expected);
  if (!(input == expected)) return "result differs:\n  got      " + to_json(input) + "\n  expected " + to_json(expected);
  return {};
}

value json(std::string_view text) {
  value v;
  issue_list issues;
  REQUIRE_MESSAGE(parse_json(text, v, issues), describe(issues));
  return v;
}

}  // namespace

TEST_CASE("fhirpath patch: official test suite (fhir-patch-tests.xml)") {
  auto cases = load_cases(std::filesystem::path(YILIAN_SHARED_DIR) / "conformance/patch/fhir-patch-tests.xml");
  REQUIRE(cases.size() >= 30);
  auto known = known_failures();
  std::size_t passed = 0;
  for (const auto& c : cases) {
    std::string problem = run_case(c);
    if (problem.empty()) {
      ++passed;
      if (known.contains(c.name)) MESSAGE("listed as a known failure but passes: " << c.name);
      continue;
    }
    if (known.contains(c.name)) continue;
    FAIL_CHECK("case '" << c.name << "': " << problem);
  }
  MESSAGE("FHIRPath Patch suite: " << passed << " of " << cases.size() << " pass (" << known.size()
                                   << " listed as known failures)");
}

TEST_CASE("fhirpath patch: JSON Parameters, typed primitives, choice names and companions") {
  value obs = json(R"({"resourceType":"Observation","status":"final","code":{"text":"x"},
    "component":[{"code":{"text":"a"}}]})");
  value params = json(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Observation"},
      {"name":"name","valueString":"value"},{"name":"value","valueQuantity":{"value":1.5,"unit":"mg"}}]},
    {"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Observation.component[0]"},
      {"name":"name","valueString":"valueInteger"},{"name":"value","valueString":"42"}]},
    {"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.value"},
      {"name":"name","valueString":"value"},{"name":"value","valueBoolean":true}]}]})");
  issue_list issues;
  REQUIRE_MESSAGE(apply_fhirpath_patch(obs, params, issues), describe(issues));
  CHECK(obs.find("valueQuantity") == nullptr);
  REQUIRE(obs.find("valueBoolean") != nullptr);
  CHECK(obs.find("valueBoolean")->is_boolean());
  const value& comp_value = *obs.find("component")->items()[0].find("valueInteger");
  CHECK(comp_value.is_number());
  CHECK(comp_value.text() == "42");

  // Deleting from a primitive list keeps the `_given` companion aligned, then drops it.
  value patient = json(R"({"resourceType":"Patient","name":[{"given":["A","B","C"],
    "_given":[null,{"extension":[{"url":"http://e","valueString":"x"}]},null]}]})");
  value del = json(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.name.given[0]"}]}]})");
  REQUIRE_MESSAGE(apply_fhirpath_patch(patient, del, issues), describe(issues));
  CHECK(to_json(patient) ==
        R"({"resourceType":"Patient","name":[{"given":["B","C"],"_given":[{"extension":[{"url":"http://e","valueString":"x"}]},null]}]})");
  REQUIRE_MESSAGE(apply_fhirpath_patch(patient, del, issues), describe(issues));
  CHECK(to_json(patient) == R"({"resourceType":"Patient","name":[{"given":["C"]}]})");
  REQUIRE_MESSAGE(apply_fhirpath_patch(patient, del, issues), describe(issues));
  CHECK(to_json(patient) == R"({"resourceType":"Patient"})");  // empty name and list removed

  // Insert and move keep the companion aligned too.
  value p2 = json(R"({"resourceType":"Patient","name":[{"given":["A","B"],"_given":[{"id":"a"},null]}]})");
  value ins = json(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"insert"},{"name":"path","valueString":"Patient.name[0].given"},
      {"name":"index","valueInteger":1},{"name":"value","valueString":"X"}]},
    {"name":"operation","part":[{"name":"type","valueCode":"move"},{"name":"path","valueString":"Patient.name[0].given"},
      {"name":"source","valueInteger":0},{"name":"destination","valueInteger":2}]}]})");
  REQUIRE_MESSAGE(apply_fhirpath_patch(p2, ins, issues), describe(issues));
  CHECK(to_json(p2) == R"({"resourceType":"Patient","name":[{"given":["X","B","A"],"_given":[null,null,{"id":"a"}]}]})");
}

TEST_CASE("fhirpath patch: extensions of primitives go to the companion") {
  value patient = json(R"({"resourceType":"Patient","birthDate":"1920-01-01","name":[{"given":["A","B"]}]})");
  value add = json(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient.birthDate"},
      {"name":"name","valueString":"extension"},{"name":"value","part":[
        {"name":"url","valueUri":"http://example.org/time"},{"name":"value","valueTime":"10:00:00"}]}]},
    {"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient.name.given[1]"},
      {"name":"name","valueString":"id"},{"name":"value","valueString":"g2"}]}]})");
  issue_list issues;
  REQUIRE_MESSAGE(apply_fhirpath_patch(patient, add, issues), describe(issues));
  CHECK(to_json(patient) ==
        R"({"resourceType":"Patient","birthDate":"1920-01-01","name":[{"given":["A","B"],"_given":[null,{"id":"g2"}]}],)"
        R"("_birthDate":{"extension":[{"url":"http://example.org/time","valueTime":"10:00:00"}]}})");
  value del = json(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.birthDate.extension"}]},
    {"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.name.given[1].id"}]}]})");
  REQUIRE_MESSAGE(apply_fhirpath_patch(patient, del, issues), describe(issues));
  CHECK(to_json(patient) == R"({"resourceType":"Patient","birthDate":"1920-01-01","name":[{"given":["A","B"]}]})");
}

TEST_CASE("fhirpath patch: errors are atomic and name the operation and path") {
  const value original = json(R"({"resourceType":"Patient","birthDate":"1920-01-01","gender":"male"})");
  auto check_fails = [&](std::string_view params_json, issue_type type, std::string_view fragment) {
    value patient = original;
    issue_list issues;
    CHECK_FALSE(apply_fhirpath_patch(patient, json(params_json), issues));
    CHECK(patient == original);
    REQUIRE(issues.size() == 1);
    CHECK(issues.all()[0].type == type);
    CHECK_MESSAGE(issues.all()[0].diagnostics.find(fragment) != std::string::npos, issues.all()[0].diagnostics);
  };
  // The first operation succeeds, the second fails: nothing is applied.
  check_fails(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.gender"}]},
    {"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.deceased"},
      {"name":"value","valueBoolean":true}]}]})",
              issue_type::processing, "operation 2 of 2 (replace Patient.deceased)");
  check_fails(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},
      {"name":"name","valueString":"birthDate"},{"name":"value","valueDate":"1930-01-01"}]}]})",
              issue_type::processing, "already present");
  check_fails(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"frobnicate"},{"name":"path","valueString":"Patient"}]}]})",
              issue_type::invalid, "unknown operation type");
  check_fails(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.(("}]}]})",
              issue_type::invalid, "invalid FHIRPath");
  check_fails(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},
      {"name":"name","valueString":"nickname"},{"name":"value","valueString":"x"}]}]})",
              issue_type::processing, "unknown element 'nickname'");
  check_fails(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.birthDate"},
      {"name":"value","valueQuantity":{"value":1}}]}]})",
              issue_type::invalid, "does not fit Patient.birthDate");
  check_fails(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"insert"},{"name":"path","valueString":"Patient.gender"},
      {"name":"index","valueInteger":0},{"name":"value","valueCode":"female"}]}]})",
              issue_type::processing, "does not select a list");
  check_fails(R"({"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"path","valueString":"Patient"}]}]})",
              issue_type::invalid, "missing part 'type'");
  check_fails(R"({"resourceType":"Patient"})", issue_type::invalid, "must be a Parameters resource");

  // Deleting what is not there is not an error.
  value patient = original;
  issue_list issues;
  CHECK(apply_fhirpath_patch(patient, json(R"({"resourceType":"Parameters","parameter":[
    {"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.telecom"}]}]})"),
                             issues));
  CHECK(patient == original);
}
