#include "test_support.hpp"
#include "yilian/fhir/json.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

using yilian::fhir::issue_list;
using yilian::fhir::issue_type;
using yilian::fhir::parse_json;
using yilian::fhir::to_json;
using yilian::fhir::value;
using yilian::fhir::value_kind;

namespace {

using yilian::test::cpu_clock;

value parse_ok(std::string_view text) {
  value v;
  issue_list issues;
  bool ok = parse_json(text, v, issues);
  REQUIRE_MESSAGE(ok, text);
  CHECK(issues.empty());
  return v;
}

// The single issue of a failing parse.
yilian::fhir::issue parse_fails(std::string_view text) {
  value v;
  issue_list issues;
  CHECK_FALSE(parse_json(text, v, issues));
  REQUIRE(issues.size() == 1);
  CHECK(issues.has_errors());
  CHECK(issues.all()[0].type == issue_type::structure);
  CHECK(v.is_null());
  return issues.all()[0];
}

using yilian::test::read_file;

}  // namespace

TEST_CASE("json: parse builds an ordered tree with literal numbers") {
  value v = parse_ok(R"({"resourceType":"Observation","valueQuantity":{"value":1.50,"unit":"mg"},
                         "n":[1,-0.0,1e3,12345678901234567890123],"b":[true,false,null],"s":"\u00e9\"\\/\n"})");
  REQUIRE(v.is_object());
  REQUIRE(v.members().size() == 5);
  CHECK(v.members()[0].name == "resourceType");
  CHECK(v.find("resourceType")->text() == "Observation");
  const value* q = v.find("valueQuantity")->find("value");
  REQUIRE(q);
  CHECK(q->kind() == value_kind::number);
  CHECK(q->text() == "1.50");
  const auto& n = v.find("n")->items();
  REQUIRE(n.size() == 4);
  CHECK(n[1].text() == "-0.0");
  CHECK(n[2].text() == "1e3");
  CHECK(n[3].text() == "12345678901234567890123");
  const auto& b = v.find("b")->items();
  CHECK(b[0].as_bool());
  CHECK(b[1].is_boolean());
  CHECK_FALSE(b[1].as_bool());
  CHECK(b[2].is_null());
  CHECK(v.find("s")->text() == "\xc3\xa9\"\\/\n");
}

TEST_CASE("json: write is compact, keeps decimals and UTF-8, escapes what JSON requires") {
  const std::string compact =
      R"({"resourceType":"Observation","valueQuantity":{"value":1.50,"unit":"µg"},"a":[],"o":{},)"
      R"("n":[0.000,-1E+2,null,true,false],"s":"quote \" backslash \\ tab \t nl \n ctl \u0001 / </div>"})";
  value v = parse_ok(compact);
  CHECK(to_json(v) == compact);
}

TEST_CASE("json: pretty output parses back to the same tree") {
  value v = parse_ok(R"({"resourceType":"Patient","name":[{"given":["A","B"]}],"active":true,"x":{}})");
  std::string pretty = to_json(v, {.pretty = true});
  CHECK(pretty.find("\n  \"name\": [") != std::string::npos);
  CHECK(parse_ok(pretty) == v);
}

TEST_CASE("json: write appends to the output and copies raw JSON verbatim") {
  value bundle = value::make_object();
  bundle.set("resourceType", value::make_string("Bundle"));
  value entry = value::make_object();
  entry.set("resource", value::make_raw_json(R"({"resourceType":"Patient","id":"1"})"));
  bundle.set("entry", value::make_array()).push_back(std::move(entry));
  std::string out = "prefix:";
  yilian::fhir::write_json(bundle, out);
  CHECK(out == R"(prefix:{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"1"}}]})");
}

TEST_CASE("json: syntax errors carry the rapidjson message and the byte offset") {
  auto i = parse_fails(R"({"a": [1, 2,]})");
  CHECK(i.diagnostics.find("Invalid value") != std::string::npos);
  CHECK(i.diagnostics.find("byte offset 12") != std::string::npos);

  i = parse_fails(R"({"resourceType":"Patient","name":[{"given":["x" "y"]}]})");
  CHECK(i.diagnostics.find("byte offset") != std::string::npos);
  CHECK(i.location == "Patient.name[0].given");

  parse_fails("");
  parse_fails("{\"a\":01}");
  parse_fails("{\"a\":1.}");
  parse_fails("{\"a\":NaN}");
  parse_fails("{'a':1}");
}

TEST_CASE("json: trailing garbage, NUL bytes and invalid UTF-8 are errors") {
  auto i = parse_fails(R"({"a":1} x)");
  CHECK(i.diagnostics.find("byte offset 8") != std::string::npos);
  parse_fails(R"({"a":1}{"b":2})");
  parse_fails(std::string_view("{\"a\":1}\0garbage", 15));
  parse_fails(std::string_view("{\"a\":\"x\0y\"}", 11));
  parse_fails("{\"a\":\"\xc3\x28\"}");      // invalid continuation byte
  parse_fails("{\"a\":\"\xed\xa0\x80\"}");  // UTF-8 encoded surrogate
  parse_ok("{\"a\":1}  \n\t ");
}

TEST_CASE("json: duplicate keys are rejected with their location") {
  auto i = parse_fails(R"({"resourceType":"Patient","id":"1","id":"2"})");
  CHECK(i.diagnostics.find("duplicate key \"id\"") != std::string::npos);
  i = parse_fails(R"({"resourceType":"Patient","name":[{"family":"a"},{"given":[],"family":"b","family":"c"}]})");
  CHECK(i.diagnostics.find("\"family\"") != std::string::npos);
  CHECK(i.location == "Patient.name[1]");
  // Large objects take the sorting path.
  std::string big = "{";
  for (int k = 0; k < 40; ++k) big += "\"k" + std::to_string(k) + "\":" + std::to_string(k) + ",";
  parse_ok(big.substr(0, big.size() - 1) + "}");
  parse_fails(big + "\"k17\":0}");
  parse_fails(R"({"":1,"":2})");
}

TEST_CASE("json: nesting is limited instead of exhausting the stack") {
  std::string ok(500, '[');
  ok += std::string(500, ']');
  parse_ok(ok);
  std::string deep(100000, '[');
  deep += std::string(100000, ']');
  auto i = parse_fails(deep);
  CHECK(i.diagnostics.find("deeper than 512") != std::string::npos);
}

TEST_CASE("json: every official example round-trips parse -> write -> parse") {
  const std::filesystem::path dir = YILIAN_FHIR_PACKAGE_DIR;
  if (!std::filesystem::is_directory(dir)) {
    MESSAGE("package not unpacked at " << dir << "; skipped");
    return;
  }
  std::size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto& p = entry.path();
    if (p.extension() != ".json" || p.filename() == "package.json") continue;
    if (p.filename().string().starts_with(".")) continue;
    std::string text = read_file(p);
    value v;
    issue_list issues;
    if (!parse_json(text, v, issues)) {
      FAIL_CHECK(p.filename().string() << ": " << issues.all().front().diagnostics);
      continue;
    }
    value back;
    REQUIRE(parse_json(to_json(v), back, issues));
    if (!(back == v)) FAIL_CHECK(p.filename().string() << ": compact round trip differs");
    ++files;
  }
  CHECK(files > 5000);
}

TEST_CASE("json: throughput on the largest example") {
  const std::filesystem::path file = std::filesystem::path(YILIAN_FHIR_PACKAGE_DIR) / "Bundle-resources.json";
  if (!std::filesystem::exists(file)) return;
  std::string text = read_file(file);
  using clock = cpu_clock;
  auto mb_per_s = [&](clock::duration d, std::size_t bytes) {
    return static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(d).count();
  };
  // Best of three runs (the machine may be shared); the output buffer is reused as a server would.
  auto best = [](auto&& fn) {
    clock::duration b = clock::duration::max();
    for (int k = 0; k < 3; ++k) {
      auto t = clock::now();
      fn();
      b = std::min(b, clock::now() - t);
    }
    return b;
  };
  value v;
  issue_list issues;
  auto parse_time = best([&] { REQUIRE(parse_json(text, v, issues)); });
  std::string out, pretty;
  auto write_time = best([&] {
    out.clear();
    yilian::fhir::write_json(v, out);
  });
  auto pretty_time = best([&] {
    pretty.clear();
    yilian::fhir::write_json(v, pretty, {.pretty = true});
  });
  MESSAGE("(thread CPU time) Bundle-resources.json "
          << text.size() / 1000000 << " MB: parse " << mb_per_s(parse_time, text.size()) << " MB/s, write "
          << mb_per_s(write_time, out.size()) << " MB/s (" << out.size() << " bytes), pretty write "
          << mb_per_s(pretty_time, pretty.size()) << " MB/s");
  CHECK(out.size() < text.size());
}
