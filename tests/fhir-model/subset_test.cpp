#include "yilian/fhir/subset.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "test_support.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"

using yilian::fhir::definitions;
using yilian::fhir::element_def;
using yilian::fhir::issue_list;
using yilian::fhir::member;
using yilian::fhir::subset_resource;
using yilian::fhir::summary_mode;
using yilian::fhir::to_json;
using yilian::fhir::validate_resource;
using yilian::fhir::value;
using names = std::vector<std::string>;

namespace fs = std::filesystem;

namespace {

value parse(std::string_view text) { return yilian::test::parse_json_or_fail(text); }

value official_example(const std::string& file) {
  return parse(yilian::test::read_file(fs::path(YILIAN_FHIR_PACKAGE_DIR) / file));
}

std::vector<std::string> member_names(const value& object) {
  std::vector<std::string> out;
  for (const auto& m : object.members()) out.push_back(m.name);
  return out;
}

bool is_subsetted_tag(const value& tag) {
  const value* system = tag.find("system");
  const value* code = tag.find("code");
  return system && code && system->text() == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue" &&
         code->text() == "SUBSETTED";
}

// Number of SUBSETTED tags in meta.tag.
int subsetted_tags(const value& resource) {
  const value* meta = resource.find("meta");
  const value* tags = meta ? meta->find("tag") : nullptr;
  if (!tags) return 0;
  return static_cast<int>(std::count_if(tags->items().begin(), tags->items().end(), is_subsetted_tag));
}

}  // namespace

TEST_CASE("subset: _summary=true on the official Patient example") {
  const value patient = official_example("Patient-example.json");
  const value summary = subset_resource(patient, summary_mode::summary, {});
  CHECK(member_names(summary) == std::vector<std::string>{"resourceType", "id", "meta", "identifier", "active", "name",
                                                          "telecom", "gender", "birthDate", "_birthDate", "deceasedBoolean",
                                                          "address", "managingOrganization"});
  CHECK(subsetted_tags(summary) == 1);
  // HumanName is a datatype: its summary elements (all but id/extension) stay.
  CHECK(to_json(*summary.find("name")) == to_json(*patient.find("name")));
  // Summary again: nothing more to remove, the tag is not duplicated.
  CHECK(subset_resource(summary, summary_mode::summary, {}) == summary);
}

TEST_CASE("subset: _summary=true recurses into backbone elements and keeps modifier extensions whole") {
  const value bp = official_example("Observation-blood-pressure.json");
  const value summary = subset_resource(bp, summary_mode::summary, {});
  CHECK(summary.find("text") == nullptr);
  CHECK(summary.find("interpretation") == nullptr);    // not summary
  CHECK(summary.find("bodySite") == nullptr);          // not summary
  CHECK(summary.find("valueQuantity") == nullptr);     // absent in the example
  REQUIRE(summary.find("component") != nullptr);
  const auto& components = summary.find("component")->items();
  REQUIRE(components.size() == bp.find("component")->items().size());
  for (const value& c : components) {
    // component.code and component.value[x] are summary; component.interpretation is not.
    CHECK(member_names(c) == names{"code", "valueQuantity"});
    CHECK(to_json(*c.find("valueQuantity")).find("\"unit\"") != std::string::npos);
  }

  const value resource = parse(R"({"resourceType":"Patient","id":"p1",
    "extension":[{"url":"http://example.org/a","valueString":"x"}],
    "modifierExtension":[{"url":"http://example.org/m","valueBoolean":true}],
    "contained":[{"resourceType":"Organization","id":"o1","name":"Org"}],
    "contact":[{"name":{"family":"Kin"}}],
    "link":[{"id":"l1","modifierExtension":[{"url":"http://example.org/lm","valueCode":"c"}],
             "other":{"reference":"Patient/p2"},"type":"seealso"}],
    "name":[{"extension":[{"url":"http://example.org/n","valueString":"y"}],"family":"Doe","given":["J"],
             "_given":[{"extension":[{"url":"http://example.org/g","valueString":"z"}]}]}],
    "unknownElement":1})");
  const value s = subset_resource(resource, summary_mode::summary, {});
  // Top-level extension, contained and contact are not summary; DomainResource.modifierExtension
  // is not summary either in R4, but BackboneElement.modifierExtension is.
  CHECK(member_names(s) == names{"resourceType", "id", "meta", "link", "name"});
  const value& link = s.find("link")->items().at(0);
  CHECK(member_names(link) == names{"modifierExtension", "other", "type"});  // Element.id is not summary
  CHECK(to_json(*link.find("modifierExtension")) == to_json(*resource.find("link")->items()[0].find("modifierExtension")));
  // Inside a datatype, its own flags apply: HumanName.extension is not summary, the companion
  // "_given" goes with "given".
  const value& name = s.find("name")->items().at(0);
  CHECK(member_names(name) == names{"family", "given", "_given"});
  CHECK(subsetted_tags(s) == 1);
}

TEST_CASE("subset: _summary=text keeps id, meta, text and the mandatory top-level elements") {
  const value observation = official_example("Observation-example.json");
  const value text = subset_resource(observation, summary_mode::text, {});
  CHECK(member_names(text) == names{"resourceType", "id", "meta", "text", "status", "code"});
  CHECK(to_json(*text.find("code")) == to_json(*observation.find("code")));  // kept whole
  CHECK(subsetted_tags(text) == 1);
}

TEST_CASE("subset: _summary=data removes the narrative only") {
  const value observation = official_example("Observation-example.json");
  const value data = subset_resource(observation, summary_mode::data, {});
  CHECK(member_names(data) == names{"resourceType", "id", "meta", "status", "category", "code", "subject",
                                    "encounter", "effectiveDateTime", "valueQuantity"});
  CHECK(subsetted_tags(data) == 1);
  // Nothing to remove: unchanged, no tag.
  CHECK(subset_resource(parse(R"({"resourceType":"Basic","id":"b","code":{"text":"x"}})"), summary_mode::data, {}) ==
        parse(R"({"resourceType":"Basic","id":"b","code":{"text":"x"}})"));
}

TEST_CASE("subset: _elements keeps the named elements plus id, meta and mandatory ones") {
  const value observation = official_example("Observation-example.json");
  for (const char* requested : {"value", "valueQuantity", "value[x]"}) {
    CAPTURE(requested);
    const value subset = subset_resource(observation, summary_mode::full, {"subject", requested});
    CHECK(member_names(subset) == names{"resourceType", "id", "meta", "status", "code", "subject", "valueQuantity"});
    CHECK(subsetted_tags(subset) == 1);
  }
  // Another choice type than the one present: the value is not requested.
  CHECK(subset_resource(observation, summary_mode::full, {"valueString"}).find("valueQuantity") == nullptr);
  // Unknown names select nothing; unknown elements of the data are dropped.
  const value patient = parse(R"({"resourceType":"Patient","id":"p","birthDate":"2000-01-01",
                                  "_birthDate":{"id":"b"},"gender":"male","madeUp":true})");
  const value subset = subset_resource(patient, summary_mode::full, {"birthDate", "nonsense"});
  CHECK(member_names(subset) == names{"resourceType", "id", "meta", "birthDate", "_birthDate"});
  // Everything requested: nothing removed, no tag.
  const value all = official_example("Patient-example.json");
  names everything;
  for (const auto& m : all.members()) everything.push_back(m.name);
  CHECK(subset_resource(all, summary_mode::full, everything) == all);
}

TEST_CASE("subset: the SUBSETTED tag is added once, next to existing tags, meta created after id") {
  const value tagged = parse(R"({"resourceType":"Patient","id":"p","meta":{"versionId":"3","tag":[
      {"system":"http://example.org/tags","code":"keep"},
      {"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED"}]},
      "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}})");
  const value data = subset_resource(tagged, summary_mode::data, {});
  CHECK(subsetted_tags(data) == 1);
  CHECK(data.find("meta")->find("tag")->items().size() == 2);
  CHECK(data.find("meta")->find("versionId")->text() == "3");

  const value untagged = parse(R"({"resourceType":"Patient","id":"p","gender":"female","active":true})");
  const value subset = subset_resource(untagged, summary_mode::full, {"active"});
  CHECK(to_json(subset) ==
        R"({"resourceType":"Patient","id":"p","meta":{"tag":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED","display":"subsetted"}]},"active":true})");
}

TEST_CASE("subset: full mode and input that is not a known resource come back unchanged") {
  const value patient = official_example("Patient-example.json");
  CHECK(subset_resource(patient, summary_mode::full, {}) == patient);
  for (const char* text : {R"([1,2])", R"("text")", R"({"id":"x"})", R"({"resourceType":"NoSuchType","id":"x"})",
                           R"({"resourceType":"HumanName","family":"x"})", R"({"resourceType":7})"}) {
    CAPTURE(text);
    const value v = parse(text);
    CHECK(subset_resource(v, summary_mode::summary, {}) == v);
    CHECK(subset_resource(v, summary_mode::full, {"id"}) == v);
  }
}

namespace {

// Where is_subset_of looks: the SUBSETTED tag may be new in the resource's meta.tag.
enum class place { resource, meta, meta_tag, nested };

// Every member of `reduced` appears in `original` with the same name (ordered subsequences of
// arrays), except the resource's meta.tag that gains the SUBSETTED tag.
bool is_subset_of(const value& reduced, const value& original, place where = place::resource) {
  if (reduced.kind() != original.kind()) return false;
  if (reduced.is_object()) {
    for (const member& m : reduced.members()) {
      place inner = place::nested;
      if (where == place::resource && m.name == "meta") inner = place::meta;
      if (where == place::meta && m.name == "tag") inner = place::meta_tag;
      const value* counterpart = original.find(m.name);
      if (!counterpart && inner != place::nested) continue;  // meta or meta.tag created for the tag
      if (!counterpart || !is_subset_of(m.val, *counterpart, inner)) return false;
    }
    return true;
  }
  if (reduced.is_array()) {
    std::size_t next = 0;
    for (const value& item : reduced.items()) {
      std::size_t found = next;
      while (found < original.items().size() && !is_subset_of(item, original.items()[found], place::nested)) ++found;
      if (found == original.items().size()) {
        if (where == place::meta_tag && is_subsetted_tag(item)) continue;
        return false;
      }
      next = found + 1;
    }
    return true;
  }
  return reduced == original;
}

bool has_empty_container(const value& v) {
  if ((v.is_object() && v.members().empty()) || (v.is_array() && v.items().empty())) return true;
  for (const member& m : v.members())
    if (has_empty_container(m.val)) return true;
  for (const value& item : v.items())
    if (has_empty_container(item)) return true;
  return false;
}

// Every member at the resource level and inside its backbone elements is flagged isSummary.
bool only_summary_members(const value& object, const element_def& parent, std::string& offending) {
  const definitions& defs = definitions::r4();
  for (const member& m : object.members()) {
    if (m.name == "resourceType") continue;
    std::string_view name = m.name.starts_with('_') ? std::string_view(m.name).substr(1) : std::string_view(m.name);
    const element_def* element = defs.find_child(parent, name);
    if (!element || !element->is_summary) {
      offending = parent.path + "." + m.name;
      return false;
    }
    if (element->type_codes == std::vector<std::string>{"BackboneElement"} && !m.name.starts_with('_')) {
      const std::vector<value> single{m.val};
      for (const value& item : m.val.is_array() ? m.val.items() : single)
        if (item.is_object() && !only_summary_members(item, *element, offending)) return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("subset: every official example in summary, text and data form") {
  const fs::path dir = YILIAN_FHIR_PACKAGE_DIR;
  int checked = 0, reduced = 0, valid_data_forms = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    if (!file.ends_with(".json") || file == "package.json" || file.starts_with(".")) continue;
    value original;
    issue_list parse_issues;
    if (!yilian::fhir::parse_json(yilian::test::read_file(entry.path()), original, parse_issues)) continue;
    const value* type_name = original.find("resourceType");
    if (!type_name || !definitions::r4().is_resource_type(type_name->text())) continue;
    const auto* type = definitions::r4().find_type(type_name->text());
    CAPTURE(file);
    ++checked;

    const value summary = subset_resource(original, summary_mode::summary, {});
    CHECK(summary.find("resourceType")->text() == type_name->text());
    if (const value* id = original.find("id")) CHECK(*summary.find("id") == *id);
    std::string offending;
    CHECK_MESSAGE(only_summary_members(summary, type->root, offending), offending);
    CHECK(summary.find("text") == nullptr);
    CHECK(summary.find("contained") == nullptr);
    CHECK(is_subset_of(summary, original));
    CHECK_FALSE(has_empty_container(summary));
    CHECK(subsetted_tags(summary) == (summary == original ? subsetted_tags(original) : 1));
    if (!(summary == original)) ++reduced;
    CHECK(subset_resource(summary, summary_mode::summary, {}) == summary);  // idempotent
    value reparsed;
    CHECK(yilian::fhir::parse_json(to_json(summary), reparsed, parse_issues));
    CHECK(reparsed == summary);

    const value text = subset_resource(original, summary_mode::text, {});
    for (const member& m : text.members()) {
      const element_def* element = definitions::r4().find_child(type->root, m.name);
      const bool allowed = m.name == "resourceType" || m.name == "id" || m.name == "meta" || m.name == "text" ||
                           (element && element->min > 0);
      CHECK_MESSAGE(allowed, m.name);
    }
    CHECK(is_subset_of(text, original));

    // Removing the narrative keeps a valid resource valid.
    const value data = subset_resource(original, summary_mode::data, {});
    CHECK(data.find("text") == nullptr);
    CHECK(is_subset_of(data, original));
    issue_list issues;
    if (validate_resource(original, issues)) {
      issue_list data_issues;
      CHECK_MESSAGE(validate_resource(data, data_issues), file);
      ++valid_data_forms;
    }
  }
  MESSAGE(checked << " official examples subsetted, " << reduced << " reduced by _summary=true, " << valid_data_forms
                  << " data forms validated");
  CHECK(checked > 1000);
  CHECK(reduced > checked / 2);
  CHECK(valid_data_forms > 1000);
}
