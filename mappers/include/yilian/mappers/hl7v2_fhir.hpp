// HL7 v2 messages to FHIR R4 transaction Bundles, following the HL7 v2-to-FHIR mapping IG where
// it speaks (segment maps PID, PV1, NK1, IN1, OBR, OBX, SPM, NTE).
//
// Supported: ADT^A01 A02 A03 A04 A05 A08 A11 A13 A28 A31 A40, ORU^R01, ORM^O01 and OML^O21
// (laboratory/radiology orders with OBR -> ServiceRequest), SIU^S12-S15 -> Appointment and
// MDM^T02 -> DocumentReference (TX lines as one text/plain attachment). Anything else comes back
// with supported = false and a table 0357 problem (200 unknown type, 201 unknown event): answer AR.
//
// Identity. Every entry is a conditional update on a stable business identifier, so replaying a
// message updates the same resources instead of adding new ones:
//   Patient            PUT Patient?identifier=   a valid 18-digit 居民身份证号 first, else PID-3 (first with a system)
//   Encounter          PUT Encounter?identifier= PV1-19 visit number
//   DiagnosticReport   PUT ...?identifier=       OBR-3 filler number (else ORC-3, else OBR-2 placer)
//   Observation        PUT ...?identifier=       OBX-21, else filler number + "/" + OBX-3 code [+ "/" + OBX-4 sub-id]
//   ServiceRequest     PUT ...?identifier=       placer order number (OBR-2, else ORC-2), else the filler number
//   Appointment        PUT ...?identifier=       SCH-2 filler appointment id, else SCH-1
//   DocumentReference  PUT ...?identifier=       TXA-12 unique document number (masterIdentifier)
//   Specimen           PUT ...?identifier=       SPM-2 (else filler number + "/specimen" for OBR-15)
//   Organization, Practitioner, Location, RelatedPerson, Coverage, DocumentReference likewise.
// Identifiers whose assigning authority has no configured system get a local system
// "urn:yilian:local:<authority>:<what>" (percent-encoded), or "urn:yilian:local:<MSH-4>:<what>" when
// no authority is sent, so two feeds naming the same authority (HIS and LIS) meet on one resource. Entries refer to
// each other by urn:uuid fullUrls that are derived from MSH-4, MSH-10 and the entry's identity (a hash), so the same
// message always yields the same Bundle.
//
// Choices where the IG leaves room:
// - A40 merge: the surviving patient (PID) gets link type "replaces" to the merged one; the merged
//   patient (MRG-1) is written as an inactive record with its identifiers, MRG-7 name and link
//   "replaced-by" to the survivor. References to the merged record are not moved: readers follow
//   the link (FHIR Patient.link semantics, IHE PIXm merge).
// - OBX ED and RP values become a DocumentReference (attachment data or url) that the Observation
//   names in derivedFrom (R4 Observation.value[x] has no Attachment).
// - NTE after OBR: DiagnosticReport has no note in R4, so they go into the R5 cross-version
//   extension http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note.
//   NTE after OBX: Observation.note.
//
// Local codes: every coded element whose coding system is not a standard one (LOINC, SNOMED CT,
// ICD, UCUM, HL7 tables, OIDs...) is offered to mapping_options::translate; a returned coding is
// added next to the local coding, otherwise the local coding stays alone and a warning says so.
// Codes are never dropped.
//
// Every resource is validated against the R4 definitions and the alliance rules; what fails is an
// error problem (the message is answered AE).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "yilian/fhir/value.hpp"
#include "yilian/mappers/hl7v2.hpp"

namespace yilian::mappers::hl7v2 {

struct coding {
  std::string system;  // FHIR code system URI
  std::string code;
  std::string display;
};

// A code as a sender used it, offered to the translator.
struct local_code {
  std::string sending_facility;  // MSH-4.1
  std::string v2_system;         // the coding system name as sent (CWE-3), may be empty
  std::string system;            // the FHIR system URI the local coding got
  std::string code;
  std::string display;
};

// Returns the standard coding for a local code, or nullopt when there is none.
using code_translator = std::function<std::optional<coding>(const local_code&)>;

struct mapping_options {
  // Assigning authority (CX-4 / EI-2 / XCN-9 namespace id, or the universal id) -> Identifier.system.
  std::map<std::string, std::string, std::less<>> authority_systems;
  code_translator translate;
  // Offset applied to timestamps with a time but no offset (Chinese systems send local time).
  std::string default_offset = "+08:00";
  // Validate each resource (and the alliance rules); problems become errors.
  bool validate = true;
};

struct mapping_result {
  fhir::value bundle;             // Bundle, type transaction (empty entry list when unsupported)
  std::vector<problem> problems;  // errors -> AE; warnings ride along in the ACK
  bool supported = true;          // false -> AR (table 0357 code 200/201 in problems)

  bool has_errors() const noexcept;
};

mapping_result map_to_fhir(const message& m, const mapping_options& options = {});

// The FHIR system URI for an HL7 v2 coding system name ("LN" -> http://loinc.org, "HL70078" ->
// http://terminology.hl7.org/CodeSystem/v2-0078, an OID -> urn:oid:...); nullopt for local ones.
std::optional<std::string> standard_code_system(std::string_view v2_system);

// The UCUM code for a unit as labs print it ("mmol/L", "10^9/L", "×10^12/L", "μmol/L"), or nullopt.
std::optional<std::string> ucum_unit(std::string_view printed);

}  // namespace yilian::mappers::hl7v2
