#include "yilian/fhir/xml.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"
#include "yilian/fhir/json.hpp"

using yilian::fhir::issue_list;
using yilian::fhir::parse_json;
using yilian::fhir::parse_xml;
using yilian::fhir::to_json;
using yilian::fhir::value;
using yilian::fhir::value_kind;
using yilian::fhir::write_xml;

namespace {

using yilian::test::cpu_clock;

using yilian::test::read_file;

std::string first_issue(const issue_list& issues) {
  if (issues.empty()) return "(no issue)";
  const auto& i = issues.all().front();
  return i.location + ": " + i.diagnostics;
}

// Path of the first difference between two trees, or "" when equal.
std::string first_difference(const value& a, const value& b, const std::string& path) {
  if (a.kind() != b.kind()) return path + " (kind)";
  if (a.text() != b.text()) return path + " (\"" + a.text().substr(0, 80) + "\" vs \"" + b.text().substr(0, 80) + "\")";
  if (a.is_array()) {
    if (a.items().size() != b.items().size()) return path + " (array size)";
    for (std::size_t i = 0; i < a.items().size(); ++i)
      if (auto d = first_difference(a.items()[i], b.items()[i], path + "[" + std::to_string(i) + "]"); !d.empty())
        return d;
  }
  if (a.is_object()) {
    for (std::size_t i = 0; i < std::max(a.members().size(), b.members().size()); ++i) {
      if (i >= a.members().size()) return path + "." + b.members()[i].name + " (missing on the left)";
      if (i >= b.members().size()) return path + "." + a.members()[i].name + " (missing on the right)";
      if (a.members()[i].name != b.members()[i].name)
        return path + " (member " + a.members()[i].name + " vs " + b.members()[i].name + ")";
      if (auto d = first_difference(a.members()[i].val, b.members()[i].val, path + "." + a.members()[i].name);
          !d.empty())
        return d;
    }
  }
  return {};
}

// JSON objects are unordered and XML follows definition order, so trees are compared with their
// members sorted by name (arrays keep their order).
void canonicalize(value& v) {
  for (value& item : v.items()) canonicalize(item);
  for (auto& m : v.members()) canonicalize(m.val);
  std::stable_sort(v.members().begin(), v.members().end(),
                   [](const yilian::fhir::member& a, const yilian::fhir::member& b) { return a.name < b.name; });
}

value json(std::string_view text) {
  value v;
  issue_list issues;
  REQUIRE_MESSAGE(parse_json(text, v, issues), first_issue(issues));
  return v;
}

value xml(std::string_view text) {
  value v;
  issue_list issues;
  bool ok = parse_xml(text, v, issues);
  REQUIRE_MESSAGE(ok, first_issue(issues));
  CHECK_MESSAGE(issues.empty(), first_issue(issues));
  return v;
}

std::string to_xml(const value& v, bool pretty = false) {
  std::string out;
  issue_list issues;
  bool ok = write_xml(v, out, issues, {.pretty = pretty});
  CHECK_MESSAGE(ok, first_issue(issues));
  return out;
}

// The issue of a failing parse_xml.
yilian::fhir::issue xml_fails(std::string_view text) {
  value v;
  issue_list issues;
  CHECK_FALSE(parse_xml(text, v, issues));
  REQUIRE_FALSE(issues.empty());
  CHECK(issues.has_errors());
  CHECK(v.is_null());
  return issues.all().front();
}

}  // namespace

TEST_CASE("xml: primitives, ids, extensions and aligned arrays") {
  const char* text = R"(<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <id value="p1"/>
  <active value="true"/>
  <name id="n1">
    <given value="A"/>
    <given id="g2"><extension url="http://example.org/x"><valueDecimal value="1.50"/></extension></given>
    <given value="C&#xA;D &amp; &lt;E&gt;"/>
  </name>
  <birthDate value="1970-01-01">
    <extension url="http://example.org/time"><valueTime value="10:00:00"/></extension>
  </birthDate>
  <multipleBirthInteger value="2"/>
</Patient>)";
  value v = xml(text);
  value expected = json(R"({"resourceType":"Patient","id":"p1","active":true,
    "name":[{"id":"n1","given":["A",null,"C\nD & <E>"],
             "_given":[null,{"id":"g2","extension":[{"url":"http://example.org/x","valueDecimal":1.50}]},null]}],
    "birthDate":"1970-01-01",
    "_birthDate":{"extension":[{"url":"http://example.org/time","valueTime":"10:00:00"}]},
    "multipleBirthInteger":2})");
  CHECK_MESSAGE(v == expected, first_difference(v, expected, "Patient"));
  CHECK(v.find("multipleBirthInteger")->kind() == value_kind::number);

  // Back to XML (definition order) and again to the same tree.
  std::string out = to_xml(v);
  CHECK(out.starts_with(R"(<Patient xmlns="http://hl7.org/fhir"><id value="p1"/><active value="true"/>)"));
  CHECK(out.find(R"(<given value="C&#xA;D &amp; &lt;E&gt;"/>)") != std::string::npos);
  CHECK(out.find(R"(<valueDecimal value="1.50"/>)") != std::string::npos);
  CHECK(xml(out) == v);
  CHECK(xml(to_xml(v, true)) == v);
}

TEST_CASE("xml: writing follows definition order, not JSON member order") {
  value v = json(R"({"resourceType":"Observation","valueQuantity":{"unit":"mg","value":1.0},"status":"final",
                     "code":{"text":"x"},"id":"o1"})");
  CHECK(
      to_xml(v) ==
      R"(<Observation xmlns="http://hl7.org/fhir"><id value="o1"/><status value="final"/><code><text value="x"/></code>)"
      R"(<valueQuantity><value value="1.0"/><unit value="mg"/></valueQuantity></Observation>)");
}

TEST_CASE("xml: contained resources and the narrative div") {
  const std::string div =
      R"(<div xmlns="http://www.w3.org/1999/xhtml"><p>a &lt; b &amp; <b>c</b><br/>&#160;é</p></div>)";
  value v =
      json(R"({"resourceType":"Patient","text":{"status":"generated","div":""},)"
           R"("contained":[{"resourceType":"Organization","id":"o"}],"managingOrganization":{"reference":"#o"}})");
  v.find("text")->set("div", value::make_string(div));
  std::string out = to_xml(v);
  CHECK(out.find("<contained><Organization><id value=\"o\"/></Organization></contained>") != std::string::npos);
  CHECK(out.find(div) != std::string::npos);
  value back = xml(out);
  CHECK_MESSAGE(back == v, first_difference(back, v, "Patient"));

  // A div written with a prefix or an inherited namespace is re-serialised with its own xmlns.
  value p = xml(R"(<Patient xmlns="http://hl7.org/fhir" xmlns:h="http://www.w3.org/1999/xhtml"><text>)"
                R"(<status value="generated"/><h:div><h:p class="x">hi<h:br/></h:p></h:div></text></Patient>)");
  CHECK(p.find("text")->find("div")->text() ==
        R"(<div xmlns="http://www.w3.org/1999/xhtml"><p class="x">hi<br/></p></div>)");

  // A narrative that is not one well-formed div is not copied into XML.
  value bad = json(R"({"resourceType":"Patient","text":{"status":"generated",
                       "div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"></div><active value=\"true\"/>"}})");
  std::string out2;
  issue_list issues;
  CHECK_FALSE(write_xml(bad, out2, issues));
  CHECK(out2.find("<active") == std::string::npos);

  // The writer's narrative checker recovers after a bad div: a later good one is still written.
  value bundle = json(R"({"resourceType":"Bundle","type":"collection","entry":[{},{}]})");
  bundle.find("entry")->items()[0].set("resource", bad);
  bundle.find("entry")->items()[1].set("resource", v);
  std::string out3;
  issue_list issues3;
  CHECK_FALSE(write_xml(bundle, out3, issues3));
  CHECK(issues3.size() == 1);
  CHECK(out3.find(div) != std::string::npos);
}

TEST_CASE("xml: malformed, unknown and hostile input become issues") {
  auto i = xml_fails(R"(<Patient xmlns="http://hl7.org/fhir"><name><family value="x"/></nam></Patient>)");
  CHECK(i.diagnostics.find("malformed XML") != std::string::npos);

  i = xml_fails(R"(<Patient xmlns="http://hl7.org/fhir"><name><surname value="x"/></name></Patient>)");
  CHECK(i.location == "Patient.name[0].surname");

  i = xml_fails(R"(<Patient><id value="x"/></Patient>)");
  CHECK(i.diagnostics.find("namespace") != std::string::npos);

  xml_fails(R"(<Banana xmlns="http://hl7.org/fhir"/>)");
  xml_fails(R"(<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>)");
  xml_fails(R"(<Patient xmlns="http://hl7.org/fhir"><id value="a"/><id value="b"/></Patient>)");
  xml_fails(R"(<Patient xmlns="http://hl7.org/fhir">text<id value="a"/></Patient>)");
  xml_fails(R"(<Patient xmlns="http://hl7.org/fhir" foo="bar"/>)");
  xml_fails(R"(<Patient xmlns="http://hl7.org/fhir"><name><given/></name></Patient>)");
  xml_fails(R"(<Patient xmlns="http://hl7.org/fhir"><birthDate/></Patient>)");
  xml_fails(R"(<Patient xmlns="http://hl7.org/fhir"><contained/></Patient>)");
  xml_fails(R"(<Patient xmlns="http://hl7.org/fhir"><contained><Patient/><Patient/></contained></Patient>)");
  xml_fails(
      R"(<Observation xmlns="http://hl7.org/fhir"><valueQuantity><value value="1.x"/></valueQuantity></Observation>)");
  xml_fails("");

  // No DTDs, so no entity expansion and no external fetches.
  i = xml_fails(R"(<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>)"
                R"(<Patient xmlns="http://hl7.org/fhir"><id value="&lol2;"/></Patient>)");
  CHECK(i.type == yilian::fhir::issue_type::security);
  xml_fails(R"(<?xml version="1.0"?><!DOCTYPE Patient SYSTEM "http://example.org/evil.dtd">)"
            R"(<Patient xmlns="http://hl7.org/fhir"/>)");

  std::string deep = R"(<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>)"
                     R"(<div xmlns="http://www.w3.org/1999/xhtml">)";
  for (int k = 0; k < 5000; ++k) deep += "<b>";
  for (int k = 0; k < 5000; ++k) deep += "</b>";
  deep += "</div></text></Patient>";
  i = xml_fails(deep);
  CHECK(i.diagnostics.find("deeper") != std::string::npos);
}

TEST_CASE("xml: unknown JSON members are reported when writing") {
  value v = json(R"({"resourceType":"Patient","id":"1","colour":"blue","active":true})");
  std::string out;
  issue_list issues;
  CHECK_FALSE(write_xml(v, out, issues));
  REQUIRE(issues.size() == 1);
  CHECK(issues.all()[0].location == "Patient.colour");
  CHECK(out == R"(<Patient xmlns="http://hl7.org/fhir"><id value="1"/><active value="true"/></Patient>)");
}

TEST_CASE("xml: golden patient-example.xml equals the package's Patient-example.json") {
  const std::filesystem::path json_file = std::filesystem::path(YILIAN_FHIR_PACKAGE_DIR) / "Patient-example.json";
  if (!std::filesystem::exists(json_file)) return;
  value from_xml = xml(read_file(std::filesystem::path(YILIAN_SOURCE_DIR) / "tests/data/xml/patient-example.xml"));
  value from_json = json(read_file(json_file));
  CHECK_MESSAGE(from_xml == from_json, first_difference(from_xml, from_json, "Patient"));
}

TEST_CASE("xml: every official JSON example converts JSON -> XML -> JSON unchanged") {
  const std::filesystem::path dir = YILIAN_FHIR_PACKAGE_DIR;
  if (!std::filesystem::is_directory(dir)) {
    MESSAGE("package not unpacked at " << dir << "; skipped");
    return;
  }
  // Files listed (first word of a line) in the known-failures file are skipped.
  std::set<std::string> known;
  {
    std::istringstream in(
        read_file(std::filesystem::path(YILIAN_SOURCE_DIR) / "tests/data/xml-roundtrip-known-failures.txt"));
    for (std::string line; std::getline(in, line);) {
      if (line.empty() || line[0] == '#') continue;
      known.insert(line.substr(0, line.find_first_of(" \t")));
    }
  }
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto& p = entry.path();
    if (p.extension() != ".json" || p.filename() == "package.json" || p.filename().string().starts_with(".")) continue;
    if (known.count(p.filename().string())) continue;
    files.push_back(p);
  }
  std::sort(files.begin(), files.end());
  std::atomic<std::size_t> next{0};
  std::mutex mutex;
  std::vector<std::string> failures;
  auto work = [&] {
    for (std::size_t k; (k = next.fetch_add(1)) < files.size();) {
      const auto& p = files[k];
      std::string failure;
      value original, back;
      issue_list issues;
      std::string text;
      if (!parse_json(read_file(p), original, issues)) {
        failure = "JSON: " + first_issue(issues);
      } else if (!write_xml(original, text, issues)) {
        failure = "write_xml: " + first_issue(issues);
      } else if (!parse_xml(text, back, issues)) {
        failure = "parse_xml: " + first_issue(issues);
      } else {
        canonicalize(original);
        canonicalize(back);
        if (!(back == original)) failure = "differs at " + first_difference(original, back, "");
      }
      if (!failure.empty()) {
        std::lock_guard lock(mutex);
        failures.push_back(p.filename().string() + ": " + failure);
      }
    }
  };
  std::vector<std::thread> threads;
  unsigned n = std::max(2u, std::min(4u, std::thread::hardware_concurrency()));
  for (unsigned t = 0; t < n; ++t) threads.emplace_back(work);
  for (auto& t : threads) t.join();
  std::sort(failures.begin(), failures.end());
  for (const auto& f : failures) FAIL_CHECK(f);
  MESSAGE(files.size() << " examples round-tripped, " << failures.size() << " failed, " << known.size()
                       << " known failures skipped");
  CHECK(files.size() > 5000);
}

TEST_CASE("xml: raw JSON entries are written as XML") {
  value bundle = json(R"({"resourceType":"Bundle","type":"searchset","entry":[{"resource":{}}]})");
  bundle.find("entry")->items()[0].set("resource", value::make_raw_json(R"({"id":"1","resourceType":"Patient"})"));
  CHECK(to_xml(bundle) == R"(<Bundle xmlns="http://hl7.org/fhir"><type value="searchset"/><entry><resource><Patient>)"
                          R"(<id value="1"/></Patient></resource></entry></Bundle>)");
}

TEST_CASE("xml: throughput on the largest example") {
  const std::filesystem::path file = std::filesystem::path(YILIAN_FHIR_PACKAGE_DIR) / "Bundle-resources.json";
  if (!std::filesystem::exists(file)) return;
  value v = json(read_file(file));
  using clock = cpu_clock;
  auto mb_per_s = [](clock::duration d, std::size_t bytes) {
    return static_cast<double>(bytes) / 1e6 / std::chrono::duration<double>(d).count();
  };
  auto t0 = clock::now();
  std::string text = to_xml(v);
  auto t1 = clock::now();
  value back = xml(text);
  auto t2 = clock::now();
  MESSAGE("(thread CPU time) Bundle-resources.json as XML (" << text.size() / 1000000 << " MB): write "
                                                             << mb_per_s(t1 - t0, text.size()) << " MB/s, parse "
                                                             << mb_per_s(t2 - t1, text.size()) << " MB/s");
}

TEST_CASE("xml: non-ASCII text survives in values and in a re-serialised div") {
  value p =
      xml("<Patient xmlns=\"http://hl7.org/fhir\" xmlns:h=\"http://www.w3.org/1999/xhtml\"><text>"
          "<status value=\"generated\"/><h:div>\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 &#x1F600;</h:div></text>"
          "<name><family value=\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80&#x1F600;\"/></name></Patient>");
  CHECK(p.find("name")->items()[0].find("family")->text() == "\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\xf0\x9f\x98\x80");
  CHECK(p.find("text")->find("div")->text() ==
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80 \xf0\x9f\x98\x80</div>");
  CHECK(xml(to_xml(p)) == p);
}

TEST_CASE("xml: a narrative from a CRLF document reads with LF line ends, like any XML text") {
  std::string crlf = "<Patient xmlns=\"http://hl7.org/fhir\">\r\n<text><status value=\"generated\"/>"
                     "<div xmlns=\"http://www.w3.org/1999/xhtml\">\r\n<p>a</p>\r\n</div></text></Patient>";
  value v = xml(crlf);
  CHECK(v.find("text")->find("div")->text() == "<div xmlns=\"http://www.w3.org/1999/xhtml\">\n<p>a</p>\n</div>");
}
