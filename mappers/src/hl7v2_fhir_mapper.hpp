// Internal to the HL7 v2 -> FHIR mappers: the state of one mapping (entries so far, problems) and
// the datatype maps (CX, EI, CWE, XPN, XAD, XTN, XCN, XON) the segment maps share.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/fhir/value.hpp"
#include "yilian/mappers/hl7_time.hpp"
#include "yilian/mappers/hl7v2.hpp"
#include "yilian/mappers/hl7v2_fhir.hpp"

namespace yilian::mappers::hl7v2::detail {

const field* field_at(const segment& s, int n);
const repetition* repetition_at(const segment& s, int n, std::size_t r = 0);
std::vector<const repetition*> repetitions(const segment& s, int n);
// Component c, sub-component sc (1-based) of a repetition; "" when absent.
std::string part(const repetition* r, int c, int sc = 1);
// Leaf of the first repetition of field f.
std::string leaf(const segment& s, int f, int c = 1, int sc = 1);
bool has_cjk(std::string_view text);
std::string percent_encode(std::string_view text, std::string_view keep = {});
std::string base64_of(std::string_view bytes);

fhir::value str(std::string text);
void set_text(fhir::value& object, std::string_view name, const std::string& text);
void append(fhir::value& object, std::string_view name, fhir::value item);
fhir::value reference(const std::string& urn, const std::string& display = {});

// A segment with its occurrence number among segments of its id (for problem locations).
struct segment_ref {
  const segment* seg = nullptr;
  std::size_t occurrence = 1;
};

// Every segment of a message with its occurrence number.
std::vector<segment_ref> numbered_segments(const message& m);

class mapper {
 public:
  mapper(const message& m, const mapping_options& options, mapping_result& result);

  void map_adt(const std::string& event);
  void map_oru();
  void map_orders();
  void map_schedule(const std::string& event);
  void map_document();
  void validate_entries();
  fhir::value bundle();

  void problem_at(location where, error_code code, std::string text, bool warning);

 private:
  location at(const segment_ref& s, int field, int component = 0) const;
  std::string local_system(std::string_view what) const;
  std::string urn_for(std::string_view key) const;

  std::optional<std::string> datetime(const std::string& ts, const location& where);
  std::optional<std::string> date(const std::string& ts, const location& where);

  std::string authority_system(const std::string& namespace_id, const std::string& universal_id,
                               const std::string& universal_type, std::string_view fallback,
                               const std::string& identifier_type = {}) const;
  std::optional<fhir::value> identifier_cx(const repetition* cx, std::string_view fallback, const location& where);
  // EI starting at component `first` (entity id, namespace, universal id, type).
  std::optional<fhir::value> identifier_ei(const repetition* ei, int first, std::string_view fallback,
                                           std::string_view type = {});
  std::optional<fhir::value> identifier_ei_sub(const repetition* r, int component, std::string_view fallback,
                                               std::string_view type = {});
  std::optional<fhir::value> codeable_concept(const repetition* cwe, const location& where, bool offer_local = true);
  static fhir::value table_concept(std::string_view system, const std::string& code, const std::string& display = {});
  std::optional<fhir::value> human_name(const repetition* xpn);
  std::optional<fhir::value> human_name_xcn(const repetition* xcn);
  std::optional<fhir::value> address(const repetition* xad);
  std::optional<fhir::value> contact_point(const repetition* xtn, std::string_view default_use);
  std::optional<std::string> gender(const std::string& code, const location& where);

  // Adds an entry once per key (a second call returns the first urn); PUT ?identifier= when an
  // identity is given, POST with a warning otherwise.
  std::string add_entry(std::string_view key, fhir::value resource, const std::optional<fhir::value>& identity,
                        const location& where);
  fhir::value* entry_resource(const std::string& urn);
  std::optional<std::string> practitioner(const repetition* xcn, const location& where, std::string* display = nullptr);
  std::optional<std::string> organization(const repetition* xon, const location& where);

  // Segment maps (hl7v2_fhir_adt.cpp, hl7v2_fhir_oru.cpp).
  struct patient_context {
    std::string urn;
    std::optional<fhir::value> identity;  // the identifier the Patient entry is keyed on
  };
  std::optional<patient_context> map_patient(const segment_ref& pid);
  std::optional<std::string> map_encounter(const segment_ref& pv1, const patient_context& patient,
                                           const std::string& event);
  std::vector<std::string> map_locations(const repetition* pl, const location& where);
  void map_next_of_kin(const segment_ref& nk1, const patient_context& patient);
  void map_coverage(const segment_ref& in1, const patient_context& patient);
  void map_merge(const segment_ref& mrg, const patient_context& survivor);

  struct report_context;
  void map_observation(report_context& report, const segment_ref& obx, const std::vector<segment_ref>& notes);
  void map_report(report_context& report);
  std::optional<std::string> map_specimen(const segment_ref& spm, report_context& report);
  void map_service_request(report_context& order);
  std::optional<fhir::value> observation_value(const segment_ref& obx, fhir::value& observation,
                                               report_context& report);

 public:
  const message& msg;
  const mapping_options& options;
  mapping_result& result;
  std::string facility;
  std::string control_id;

 private:
  std::vector<fhir::value> entries;
  std::vector<location> entry_locations;
  std::map<std::string, std::string> keyed_urns;
};

// An OBR group (a report, or an order) and what its segments contributed.
struct mapper::report_context {
  segment_ref obr;
  std::optional<segment_ref> orc;
  std::optional<patient_context> patient;
  std::optional<std::string> encounter;
  std::optional<fhir::value> identity;  // the number the entry is keyed on (reports: filler first; orders: placer)
  std::vector<fhir::value> identifiers;
  std::vector<std::string> results;
  std::vector<std::string> performers;
  std::vector<std::string> specimens;
  std::vector<fhir::value> notes;
  std::map<std::string, int> observation_keys;
};

}  // namespace yilian::mappers::hl7v2::detail
