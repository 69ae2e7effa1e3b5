"""De-identify DICOM datasets with the PS3.15 Annex E Basic Application Level Confidentiality Profile.

What is applied (DICOM PS3.15 2024e, Annex E, Table E.1-1 and §E.3):

* the **Basic Profile** action of every attribute listed in :data:`PROFILE` (encoded as data below,
  one line per attribute, in every nested sequence item too);
* **private attributes removed** (the Retain Safe Private Option is not offered);
* **UIDs replaced** (action U) by a keyed hash of the original under the ``2.25`` root (PS3.5 §B.2):
  the same original UID gives the same new UID at one site, so series and studies stay linked;
* the **Retain Longitudinal Temporal Information with Modified Dates Option** (§E.3.6): every
  DA and DT value that the profile does not remove is shifted by a whole number of days drawn per
  patient from a keyed hash, so intervals within a patient are kept; TM values are kept;
* curve (50xx) and overlay data and comments (60xx,3000 / 60xx,4000) removed;
* ``PatientIdentityRemoved = YES``, ``DeidentificationMethod`` and its code sequence (CID 7050:
  113100 Basic Profile, 113107 Modified Dates Option) and ``LongitudinalTemporalInformationModified``.

Images that carry burned-in annotation (``BurnedInAnnotation = YES``, or no flag on a modality that
usually burns text into pixels) are refused unless :class:`BurnedInPolicy.ALLOW` says a site cleans
pixels itself: this module does not clean pixel data.

The report says which attributes changed and how, never the original values.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import config as dicom_config
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag

from medfed.core.errors import ConfigError, DataError


class Action(enum.Enum):
    """Action codes of PS3.15 Table E.1-1 (the combined codes depend on the attribute's IOD type)."""

    DUMMY = "D"
    ZERO = "Z"
    REMOVE = "X"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"
    ZERO_OR_DUMMY = "Z/D"
    REMOVE_OR_ZERO = "X/Z"
    REMOVE_OR_DUMMY = "X/D"
    REMOVE_ZERO_OR_DUMMY = "X/Z/D"
    REMOVE_ZERO_OR_UIDS = "X/Z/U*"


class BurnedInPolicy(enum.Enum):
    """What to do with an image whose pixels may carry burned-in identifying text."""

    EXCLUDE = "exclude"  # refuse it (the default): nothing here cleans pixels
    ALLOW = "allow"  # the site cleans pixel data elsewhere, or has checked the images


# PS3.15 2024e Table E.1-1, Basic Profile column: "group,element action keyword".
# Combined codes are resolved in _resolve(): the dummy or zero-length form, which is valid whatever
# the attribute's type in the IOD.
_TABLE = """
0008,0050 Z AccessionNumber
0018,4000 X AcquisitionComments
0040,0555 X AcquisitionContextSequence
0008,0022 X/Z AcquisitionDate
0008,002A X/Z/D AcquisitionDateTime
0018,1400 X/D AcquisitionDeviceProcessingDescription
0018,9424 X AcquisitionProtocolDescription
0008,0032 X/Z AcquisitionTime
0040,4035 X ActualHumanPerformersSequence
0010,21B0 X AdditionalPatientHistory
0038,0010 X AdmissionID
0038,0020 X AdmittingDate
0008,1084 X AdmittingDiagnosesCodeSequence
0008,1080 X AdmittingDiagnosesDescription
0038,0021 X AdmittingTime
0010,2110 X Allergies
4000,0010 X Arbitrary
0040,A078 X AuthorObserverSequence
0010,1081 X BranchOfService
0018,1007 X CassetteID
0040,0280 X CommentsOnThePerformedProcedureStep
0020,9161 U ConcatenationUID
0040,3001 X ConfidentialityConstraintOnPatientDataDescription
0070,0084 Z ContentCreatorName
0070,0086 X ContentCreatorIdentificationCodeSequence
0008,0023 Z/D ContentDate
0040,A730 X ContentSequence
0008,0033 Z/D ContentTime
0008,010D U ContextGroupExtensionCreatorUID
0018,0010 Z/D ContrastBolusAgent
0018,A003 X ContributionDescription
0010,2150 X CountryOfResidence
0008,9123 U CreatorVersionUID
0038,0300 X CurrentPatientLocation
0008,0025 X CurveDate
0008,0035 X CurveTime
0040,A07C X CustodialOrganizationSequence
FFFC,FFFC X DataSetTrailingPadding
0018,1200 X DateOfLastCalibration
0018,700C X DateOfLastDetectorCalibration
0018,1012 X DateOfSecondaryCapture
0018,1000 X/Z/D DeviceSerialNumber
0018,1002 U DeviceUID
0400,0100 X DigitalSignatureUID
FFFA,FFFA X DigitalSignaturesSequence
0020,9164 U DimensionOrganizationUID
0038,0040 X DischargeDiagnosisDescription
4008,011A X DistributionAddress
4008,0119 X DistributionName
300A,0013 U DoseReferenceUID
0010,2160 X EthnicGroup
0008,0058 U FailedSOPInstanceUIDList
0070,031A U FiducialUID
0040,2017 Z FillerOrderNumberImagingServiceRequest
0020,9158 X FrameComments
0020,0052 U FrameOfReferenceUID
0018,1008 X GantryID
0018,1005 X GeneratorID
0070,0001 D GraphicAnnotationSequence
0040,4037 X HumanPerformerName
0040,4036 X HumanPerformerOrganization
0088,0200 X IconImageSequence
0008,4000 X IdentifyingComments
0020,4000 X ImageComments
0028,4000 X ImagePresentationComments
0040,2400 X ImagingServiceRequestComments
4008,0300 X Impressions
0008,0014 U InstanceCreatorUID
0008,0012 X/D InstanceCreationDate
0008,0013 X/Z/D InstanceCreationTime
0008,0081 X InstitutionAddress
0008,0082 X/Z/D InstitutionCodeSequence
0008,0080 X/Z/D InstitutionName
0008,1040 X InstitutionalDepartmentName
0010,1050 X InsurancePlanIdentification
0040,1011 X IntendedRecipientsOfResultsIdentificationSequence
4008,0111 X InterpretationApproverSequence
4008,010C X InterpretationAuthor
4008,0115 X InterpretationDiagnosisDescription
4008,0202 X InterpretationIDIssuer
4008,0102 X InterpretationRecorder
4008,010B X InterpretationText
4008,010A X InterpretationTranscriber
0008,3010 U IrradiationEventUID
0038,0011 X IssuerOfAdmissionID
0010,0021 X IssuerOfPatientID
0038,0061 X IssuerOfServiceEpisodeID
0028,1214 U LargePaletteColorLookupTableUID
0010,21D0 X LastMenstrualDate
0400,0404 X MAC
0002,0003 U MediaStorageSOPInstanceUID
0010,2000 X MedicalAlerts
0010,1090 X MedicalRecordLocator
0010,1080 X MilitaryRank
0400,0550 X ModifiedAttributesSequence
0020,3406 X ModifiedImageDescription
0020,3401 X ModifyingDeviceID
0020,3404 X ModifyingDeviceManufacturer
0008,1060 X NameOfPhysiciansReadingStudy
0040,1010 X NamesOfIntendedRecipientsOfResults
0010,2180 X Occupation
0008,1072 X OperatorIdentificationSequence
0008,1070 X OperatorsName
0400,0561 X OriginalAttributesSequence
0040,2010 X OrderCallbackPhoneNumber
0040,2008 X OrderEnteredBy
0040,2009 X OrderEntererLocation
0010,1000 X OtherPatientIDs
0010,1002 X OtherPatientIDsSequence
0010,1001 X OtherPatientNames
0008,0024 X OverlayDate
0008,0034 X OverlayTime
0028,1199 U PaletteColorLookupTableUID
0040,A07A X ParticipantSequence
0010,1040 X PatientAddress
0010,1010 X PatientAge
0010,0030 Z PatientBirthDate
0010,1005 X PatientBirthName
0010,0032 X PatientBirthTime
0010,4000 X PatientComments
0010,0020 Z PatientID
0038,0400 X PatientInstitutionResidence
0010,0050 X PatientInsurancePlanCodeSequence
0010,1060 X PatientMotherBirthName
0010,0010 Z PatientName
0010,0101 X PatientPrimaryLanguageCodeSequence
0010,0102 X PatientPrimaryLanguageModifierCodeSequence
0010,21F0 X PatientReligiousPreference
0010,0040 Z PatientSex
0010,2203 X/Z PatientSexNeutered
0010,1020 X PatientSize
0038,0500 X PatientState
0010,2155 X PatientTelecomInformation
0010,2154 X PatientTelephoneNumbers
0040,1004 X PatientTransportArrangements
0010,1030 X PatientWeight
0040,0243 X PerformedLocation
0040,0254 X PerformedProcedureStepDescription
0040,0253 X PerformedProcedureStepID
0040,0244 X PerformedProcedureStepStartDate
0040,0245 X PerformedProcedureStepStartTime
0040,0241 X PerformedStationAETitle
0040,4030 X PerformedStationGeographicLocationCodeSequence
0040,0242 X PerformedStationName
0040,4028 X PerformedStationNameCodeSequence
0008,1052 X PerformingPhysicianIdentificationSequence
0008,1050 X PerformingPhysicianName
0040,1102 X PersonAddress
0040,1101 D PersonIdentificationCodeSequence
0040,A123 D PersonName
0040,1103 X PersonTelephoneNumbers
4008,0114 X PhysicianApprovingInterpretation
0008,1062 X PhysiciansReadingStudyIdentificationSequence
0008,1048 X PhysiciansOfRecord
0008,1049 X PhysiciansOfRecordIdentificationSequence
0040,2016 Z PlacerOrderNumberImagingServiceRequest
0018,1004 X PlateID
0040,0012 X PreMedication
0010,21C0 X PregnancyStatus
0018,1030 X/D ProtocolName
0040,2001 X ReasonForImagingServiceRequest
0032,1030 X ReasonForStudy
0400,0402 X ReferencedDigitalSignatureSequence
3006,0024 U ReferencedFrameOfReferenceUID
0040,4023 U ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
0008,1140 X/Z/U* ReferencedImageSequence
0038,1234 X ReferencedPatientAliasSequence
0010,1100 X ReferencedPatientPhotoSequence
0008,1120 X ReferencedPatientSequence
0008,1111 X/Z/D ReferencedPerformedProcedureStepSequence
0400,0403 X ReferencedSOPInstanceMACSequence
0008,1155 U ReferencedSOPInstanceUID
0004,1511 U ReferencedSOPInstanceUIDInFile
0008,1110 X/Z ReferencedStudySequence
0008,0092 X ReferringPhysicianAddress
0008,0096 X ReferringPhysicianIdentificationSequence
0008,0090 Z ReferringPhysicianName
0008,0094 X ReferringPhysicianTelephoneNumbers
0010,2152 X RegionOfResidence
3006,00C2 U RelatedFrameOfReferenceUID
0040,0275 X RequestAttributesSequence
0032,1070 X RequestedContrastAgent
0040,1400 X RequestedProcedureComments
0032,1060 X/Z RequestedProcedureDescription
0040,1001 X RequestedProcedureID
0040,1005 X RequestedProcedureLocation
0000,1001 U RequestedSOPInstanceUID
0032,1032 X RequestingPhysician
0032,1033 X RequestingService
0010,2299 X ResponsibleOrganization
0010,2297 X ResponsiblePerson
4008,4000 X ResultsComments
4008,0118 X ResultsDistributionListSequence
4008,0042 X ResultsIDIssuer
300E,0008 X/Z ReviewerName
0040,4034 X ScheduledHumanPerformersSequence
0038,001E X ScheduledPatientInstitutionResidence
0040,000B X ScheduledPerformingPhysicianIdentificationSequence
0040,0006 X ScheduledPerformingPhysicianName
0040,0004 X ScheduledProcedureStepEndDate
0040,0005 X ScheduledProcedureStepEndTime
0040,0007 X ScheduledProcedureStepDescription
0040,0011 X ScheduledProcedureStepLocation
0040,0002 X ScheduledProcedureStepStartDate
0040,0003 X ScheduledProcedureStepStartTime
0040,0001 X ScheduledStationAETitle
0040,4027 X ScheduledStationGeographicLocationCodeSequence
0040,0010 X ScheduledStationName
0040,4025 X ScheduledStationNameCodeSequence
0032,1020 X ScheduledStudyLocation
0032,1021 X ScheduledStudyLocationAETitle
0008,0021 X/D SeriesDate
0008,103E X SeriesDescription
0020,000E U SeriesInstanceUID
0008,0031 X/D SeriesTime
0038,0062 X ServiceEpisodeDescription
0038,0060 X ServiceEpisodeID
0010,21A0 X SmokingStatus
0008,0018 U SOPInstanceUID
0008,2112 X/Z/U* SourceImageSequence
0038,0050 X SpecialNeeds
0008,1010 X/Z/D StationName
0088,0140 U StorageMediaFileSetUID
0032,4000 X StudyComments
0008,0020 Z StudyDate
0008,1030 X StudyDescription
0020,0010 Z StudyID
0032,0012 X StudyIDIssuer
0020,000D U StudyInstanceUID
0008,0030 Z StudyTime
0020,0200 U SynchronizationFrameOfReferenceUID
0040,DB0D U TemplateExtensionCreatorUID
0040,DB0C U TemplateExtensionOrganizationUID
4000,4000 X TextComments
2030,0020 X TextString
0008,0201 X TimezoneOffsetFromUTC
0088,0910 X TopicAuthor
0088,0912 X TopicKeywords
0088,0906 X TopicSubject
0088,0904 X TopicTitle
0008,1195 U TransactionUID
0040,A124 U UID
0040,A088 Z VerifyingObserverIdentificationCodeSequence
0040,A075 D VerifyingObserverName
0040,A073 D VerifyingObserverSequence
0040,A027 X VerifyingOrganization
0038,4000 X VisitComments
"""


def _parse_table(text: str) -> dict[BaseTag, tuple[Action, str]]:
    table: dict[BaseTag, tuple[Action, str]] = {}
    for line in text.strip().splitlines():
        tag, action, keyword = line.split()
        group, element = tag.split(",")
        table[Tag(int(group, 16), int(element, 16))] = (Action(action), keyword)
    return table


#: The Basic Profile as data: tag -> (action, keyword).
PROFILE: dict[BaseTag, tuple[Action, str]] = _parse_table(_TABLE)

#: Modalities whose images often carry burned-in text; without a BurnedInAnnotation flag they are suspect.
SUSPECT_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES"})
_DUMMY_TEXT = "ANONYMIZED"
_TEXT_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
_NUMBER_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
#: CID 7050 codes for what this module applies.
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeidConfig:
    """A site's de-identification settings.

    ``key`` is the site's secret (at least 16 bytes): it keys the UID and date-shift hashes, so nobody
    without it can link new UIDs to old ones or undo the shift. Keep it at the site.
    """

    key: bytes = field(repr=False)
    max_shift_days: int = 365
    burned_in: BurnedInPolicy = BurnedInPolicy.EXCLUDE
    suspect_modalities: frozenset[str] = SUSPECT_MODALITIES

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ConfigError(f"de-identification key must be at least 16 bytes, got {len(self.key)}")
        if not 1 <= self.max_shift_days <= 36500:
            raise ConfigError(f"max_shift_days must be in [1, 36500], got {self.max_shift_days!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One attribute that changed: where (``path`` of keywords through sequences) and the action."""

    path: str
    tag: str
    action: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeidReport:
    """What de-identification did to one dataset, without any original value."""

    changes: tuple[Change, ...]
    private_removed: int
    dates_shifted: int
    uids_replaced: int

    def counts(self) -> dict[str, int]:
        """How many attributes each action touched."""
        return dict(Counter(change.action for change in self.changes))


def keyed_digest(key: bytes, purpose: str, value: str) -> bytes:
    """HMAC-SHA-256 of ``value`` under ``key``, separated by ``purpose``."""
    return hmac.new(key, purpose.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()


def new_uid(key: bytes, uid: str) -> str:
    """The replacement of ``uid``: ``2.25.<128-bit integer>`` from a keyed hash (PS3.5 §B.2)."""
    return "2.25." + str(int.from_bytes(keyed_digest(key, "uid", uid.strip())[:16], "big"))


def shift_days(key: bytes, patient: str, max_days: int) -> int:
    """A patient's date offset: a non-zero whole number of days in [-max_days, max_days]."""
    offset = int.from_bytes(keyed_digest(key, "date-shift", patient)[:8], "big") % (2 * max_days) - max_days
    return offset if offset != 0 else max_days


def pseudonym(key: bytes, patient: str) -> str:
    """A stable pseudonymous patient id (the dummy value for PatientID and PatientName)."""
    return "ANON-" + keyed_digest(key, "patient", patient).hex()[:16].upper()


def _resolve(action: Action, vr: str) -> Action:
    """The action applied for a combined code: the form valid whatever the attribute's IOD type."""
    if action is Action.REMOVE_ZERO_OR_UIDS:
        return Action.KEEP if vr == "SQ" else Action.UID  # keep the sequence; its UIDs are replaced inside
    if action is Action.REMOVE_OR_ZERO:
        return Action.ZERO
    if action in (Action.ZERO_OR_DUMMY, Action.REMOVE_OR_DUMMY, Action.REMOVE_ZERO_OR_DUMMY):
        return Action.DUMMY
    return action


def _shift_value(value: str, vr: str, days: int) -> str:
    """Shift one DA or DT value; '' when it is not a full date (a partial date is not kept)."""
    if len(value) < 8:
        return ""
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    shifted = (day + dt.timedelta(days=days)).strftime("%Y%m%d")
    return shifted + value[8:] if vr == "DT" else shifted


class _Pass:
    """One de-identification pass over a dataset; collects the report."""

    def __init__(self, config: DeidConfig, patient: str) -> None:
        self.config = config
        self.patient = patient
        self.days = shift_days(config.key, patient, config.max_shift_days)
        self.changes: list[Change] = []
        self.private = 0
        self.dates = 0
        self.uids = 0

    def run(self, ds: Dataset, path: str = "") -> None:
        for tag in list(ds.keys()):
            element = ds[tag]
            name = f"{path}{element.keyword or str(tag)}"
            if tag.is_private:
                del ds[tag]
                self.private += 1
            elif tag.group & 0xFF00 == 0x5000 or (tag.group & 0xFF00 == 0x6000 and tag.element in (0x3000, 0x4000)):
                del ds[tag]
                self._note(name, tag, Action.REMOVE)
            elif tag in PROFILE:
                self._apply(ds, tag, _resolve(PROFILE[tag][0], element.VR), name)
            elif element.VR in ("DA", "DT"):
                self._shift(ds, tag, name)
            if tag in ds and ds[tag].VR == "SQ":
                for index, item in enumerate(ds[tag].value):
                    self.run(item, f"{name}[{index}].")

    def _note(self, path: str, tag: BaseTag, action: Action) -> None:
        self.changes.append(Change(path=path, tag=f"({tag.group:04X},{tag.element:04X})", action=action.value))

    def _apply(self, ds: Dataset, tag: BaseTag, action: Action, name: str) -> None:
        element = ds[tag]
        if action is Action.KEEP or (element.is_empty and action is not Action.REMOVE):
            return
        if element.VR in ("DA", "DT") and action is not Action.REMOVE:
            self._shift(ds, tag, name)  # the Modified Dates Option (§E.3.6) cleans the date instead
        elif element.VR == "TM" and action is not Action.REMOVE:
            return  # times are kept with the Modified Dates Option: only the day moves
        elif action is Action.REMOVE:
            del ds[tag]
            self._note(name, tag, action)
        elif element.VR == "UI" or action is Action.UID:
            self._replace_uids(ds, tag, name)
        else:
            element.value = self._dummy(tag, element.VR) if action is Action.DUMMY else self._zero(tag, element.VR)
            self._note(name, tag, action)

    def _zero(self, tag: BaseTag, vr: str) -> object:
        if tag in (Tag(0x0010, 0x0010), Tag(0x0010, 0x0020)):
            return pseudonym(self.config.key, self.patient)  # a consistent dummy keeps a site's series linkable
        return DicomSequence() if vr == "SQ" else None

    def _dummy(self, tag: BaseTag, vr: str) -> object:
        if vr == "SQ":
            return DicomSequence()
        if vr in _NUMBER_VRS:
            return 0
        return _DUMMY_TEXT if vr in _TEXT_VRS else None

    def _replace_uids(self, ds: Dataset, tag: BaseTag, name: str) -> None:
        element = ds[tag]
        if element.VR != "UI":
            element.value = None
            self._note(name, tag, Action.ZERO)
            return
        values = element.value if element.VM > 1 else [element.value]
        replaced = [new_uid(self.config.key, str(uid)) for uid in values]
        element.value = replaced if element.VM > 1 else replaced[0]
        self.uids += len(replaced)
        self._note(name, tag, Action.UID)

    def _shift(self, ds: Dataset, tag: BaseTag, name: str) -> None:
        element = ds[tag]
        if element.is_empty:
            return
        values = element.value if element.VM > 1 else [element.value]
        element.value = [_shift_value(str(v), element.VR, self.days) for v in values]
        self.dates += len(values)
        self._note(name, tag, Action.CLEAN)


def burned_in_reason(ds: Dataset, config: DeidConfig) -> str | None:
    """Why ``ds`` may carry burned-in annotation (``None`` when it should not, or the policy allows it)."""
    if config.burned_in is BurnedInPolicy.ALLOW or "PixelData" not in ds:
        return None
    flag = str(ds.get("BurnedInAnnotation", "")).strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    modality = str(ds.get("Modality", "")).strip().upper()
    if not flag and modality in config.suspect_modalities:
        return f"no BurnedInAnnotation flag on a {modality} image"
    return None


def _mark(ds: Dataset) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 E.1 Basic Profile; Modified Dates Option; medfed"
    items = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(items)
    ds.LongitudinalTemporalInformationModified = "MODIFIED"


def deidentify(ds: Dataset, config: DeidConfig, *, source: str = "<dataset>") -> tuple[Dataset, DeidReport]:
    """A de-identified copy of ``ds`` and the report of what changed (``ds`` is left untouched).

    Raises
    ------
    DataError
        The image may carry burned-in annotation and the policy is :attr:`BurnedInPolicy.EXCLUDE`.
    """
    with dicom_config.disable_value_validation():
        if (reason := burned_in_reason(ds, config)) is not None:
            raise DataError(f"{source}: refused, {reason} (pixels are not cleaned; policy burned_in=exclude)")
        out = copy.deepcopy(ds)
        patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
        run = _Pass(config, patient)
        if getattr(out, "file_meta", None) is not None:
            run.run(out.file_meta)
        run.run(out)
        _mark(out)
    report = DeidReport(
        changes=tuple(run.changes), private_removed=run.private, dates_shifted=run.dates, uids_replaced=run.uids
    )
    return out, report


def read_dicom(path: Path) -> Dataset:
    """Read one DICOM file; :class:`DataError` naming the file when it is not valid DICOM."""
    try:
        with dicom_config.disable_value_validation():
            ds = pydicom.dcmread(path)
            for _ in ds.iterall():  # decode every element now, so a truncated file fails here
                pass
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if (problem := truncation(ds)) is not None:
        raise DataError(f"{path}: truncated DICOM file ({problem})")
    return ds


def truncation(ds: Dataset) -> str | None:
    """Why ``ds`` looks cut short, or ``None``: pydicom reads a file cut between elements without complaint."""
    if "Rows" in ds and "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return "image attributes but no pixel data"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or syntax is None or syntax.is_compressed:
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * frames * ds.BitsAllocated // 8
    except (AttributeError, TypeError, ValueError):
        return None
    have = len(ds.PixelData)
    return f"pixel data holds {have} bytes, {expected} expected" if have < expected else None


def deidentify_file(source: Path, target: Path, config: DeidConfig) -> DeidReport:
    """De-identify one file into ``target`` (same transfer syntax; pixel data untouched)."""
    out, report = deidentify(read_dicom(source), config, source=str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    with dicom_config.disable_value_validation():
        out.save_as(target, enforce_file_format=False)
    return report


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchReport:
    """De-identified files with their reports, and the files excluded with the reason."""

    written: tuple[tuple[Path, DeidReport], ...]
    excluded: tuple[tuple[Path, str], ...]


def deidentify_files(sources: Iterable[Path], out_dir: Path, config: DeidConfig) -> BatchReport:
    """De-identify many files into ``out_dir`` (named ``<n>.dcm``, so file names leak nothing).

    A file refused by the burned-in policy is excluded and listed, never silently dropped; an
    unreadable file raises :class:`DataError` naming it.
    """
    written: list[tuple[Path, DeidReport]] = []
    excluded: list[tuple[Path, str]] = []
    for index, source in enumerate(_ordered(sources)):
        ds = read_dicom(source)
        if (reason := burned_in_reason(ds, config)) is not None:
            excluded.append((source, reason))
            continue
        target = out_dir / f"{index:06d}.dcm"
        out, report = deidentify(ds, config, source=str(source))
        target.parent.mkdir(parents=True, exist_ok=True)
        with dicom_config.disable_value_validation():
            out.save_as(target, enforce_file_format=False)
        written.append((target, report))
    return BatchReport(written=tuple(written), excluded=tuple(excluded))


def _ordered(sources: Iterable[Path]) -> Sequence[Path]:
    return sorted(Path(s) for s in sources)
