#include "yilian/fhir/json_patch.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>

#include "test_support.hpp"
#include "yilian/fhir/json.hpp"

using yilian::fhir::apply_json_patch;
using yilian::fhir::issue_list;
using yilian::fhir::issue_type;
using yilian::fhir::parse_json;
using yilian::fhir::to_json;
using yilian::fhir::value;
using yilian::fhir::value_kind;

namespace {

using yilian::test::known_failures;
using yilian::test::same_json;
value parse(std::string_view text) { return yilian::test::parse_json_or_fail(text); }
std::string read_text(const std::filesystem::path& path) { return yilian::test::read_file(path); }

}  // namespace

TEST_CASE("json patch: official conformance cases") {
  auto path = std::filesystem::path(YILIAN_SHARED_DIR) / "conformance/patch/json-patch-tests.json";
  REQUIRE(std::filesystem::exists(path));
  value cases = parse(read_text(path));
  REQUIRE(cases.is_array());
  auto known = known_failures("json-patch-known-failures.txt");
  int run = 0;
  for (const value& c : cases.items()) {
    const value* comment = c.find("comment");
    std::string name = comment != nullptr ? comment->text() : "case " + std::to_string(run);
    if (c.find("disabled") != nullptr && c.find("disabled")->as_bool()) continue;
    ++run;
    CAPTURE(name);
    const value* doc = c.find("doc");
    const value* patch = c.find("patch");
    REQUIRE(doc != nullptr);
    REQUIRE(patch != nullptr);
    value target = *doc;
    issue_list issues;
    bool ok = apply_json_patch(target, *patch, issues);
    bool passed;
    if (const value* expected = c.find("expected")) {
      passed = ok && issues.empty() && same_json(target, *expected);
    } else {
      // Error cases: the patch fails, an issue is reported and the document is untouched.
      passed = !ok && issues.has_errors() && target == *doc;
    }
    if (known.contains(name)) {
      CHECK_MESSAGE(!passed, "listed as a known failure but passes now: " << name);
    } else {
      CHECK_MESSAGE(passed, name << " -> " << to_json(target) << " " << issues.size() << " issue(s)");
    }
  }
  CHECK(run == 16);
}

TEST_CASE("json patch: hand-built operations") {
  value doc = parse(R"({"resourceType":"Patient","name":[{"family":"Li"}],"a/b":1,"m~n":2})");
  issue_list issues;

  SUBCASE("escapes ~0 and ~1") {
    value patch = parse(R"([{"op":"replace","path":"/a~1b","value":3},{"op":"remove","path":"/m~0n"}])");
    REQUIRE(apply_json_patch(doc, patch, issues));
    CHECK(doc.find("a/b")->text() == "3");
    CHECK(doc.find("m~n") == nullptr);
  }
  SUBCASE("append with - and copy") {
    value patch = parse(R"([{"op":"add","path":"/name/-","value":{"family":"Wang"}},
                            {"op":"copy","from":"/name/0","path":"/name/-"}])");
    REQUIRE(apply_json_patch(doc, patch, issues));
    REQUIRE(doc.find("name")->items().size() == 3);
    CHECK(doc.find("name")->items()[1].find("family")->text() == "Wang");
    CHECK(doc.find("name")->items()[2].find("family")->text() == "Li");
  }
  SUBCASE("atomic: a failing later operation leaves the document unchanged") {
    value before = doc;
    value patch = parse(R"([{"op":"add","path":"/gender","value":"male"},{"op":"test","path":"/gender","value":"x"}])");
    CHECK_FALSE(apply_json_patch(doc, patch, issues));
    CHECK(doc == before);
    REQUIRE(issues.size() == 1);
    CHECK(issues.all()[0].type == issue_type::processing);
    CHECK(issues.all()[0].diagnostics.find("operation 1") != std::string::npos);
  }
  SUBCASE("malformed patches are invalid") {
    for (const char* text : {R"({"op":"add"})", R"([{"op":"frobnicate","path":"/a"}])", R"([{"op":"add","path":"x","value":1}])",
                             R"([{"op":"add","path":"/x"}])", R"([{"op":"move","path":"/x"}])", R"([{"path":"/x"}])",
                             R"([{"op":"remove","path":"/name/01"}])", R"([{"op":"remove","path":"/a~2"}])"}) {
      CAPTURE(text);
      issue_list local;
      value copy = doc;
      CHECK_FALSE(apply_json_patch(copy, parse(text), local));
      CHECK(copy == doc);
      REQUIRE(local.size() == 1);
    }
  }
  SUBCASE("move into own child is rejected; replace root works") {
    CHECK_FALSE(apply_json_patch(doc, parse(R"([{"op":"move","from":"/name","path":"/name/0/x"}])"), issues));
    value patch = parse(R"([{"op":"replace","path":"","value":{"resourceType":"Basic"}}])");
    REQUIRE(apply_json_patch(doc, patch, issues));
    CHECK(doc.find("resourceType")->text() == "Basic");
  }
  SUBCASE("test compares numbers by value and objects regardless of order") {
    value patch = parse(R"([{"op":"test","path":"/a~1b","value":1.0},{"op":"test","path":"/name/0","value":{"family":"Li"}}])");
    CHECK(apply_json_patch(doc, patch, issues));
  }
}
